"""Two processes under torchrun (gloo, CPU): training runs, and distributed evaluation equals
single-process evaluation (every validation image counted exactly once)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import TINY

pytestmark = pytest.mark.slow  # torchrun subprocesses

# 5 validation images: an uneven split over 2 ranks, where sampler padding would count one twice
DATA = TINY + ["data.dataset.num_samples={train:8,val:5}", "data.batch_size=4",  # 2 per process: BN needs 2
               "data.val_batch_size=4"]


def torchrun(module, *args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


def single(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_two_process_training_and_evaluation_match_single_process(tmp_path):
    run_dir = tmp_path / "ddp"
    out = torchrun("segrepro.train", *DATA, "trainer.max_iters=2", "trainer.ckpt_every=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (run_dir / "checkpoints" / "step_0000002.pt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 2

    ckpt = run_dir / "checkpoints" / "step_0000002.pt"
    crf = ["crf=dense", "crf.steps=[1,2]", "crf.workers=1"]  # each rank its own CRF pool
    out = torchrun("segrepro.evaluate", f"checkpoint={ckpt}", *crf, f"hydra.run.dir={tmp_path / 'e2'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    out = single("segrepro.evaluate", f"checkpoint={ckpt}", *crf, f"hydra.run.dir={tmp_path / 'e1'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    two = json.loads((tmp_path / "e2" / "eval.json").read_text())
    one = json.loads((tmp_path / "e1" / "eval.json").read_text())
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert sum(map(sum, one["confusion_matrix"])) > 0
    for steps in ("1", "2"):
        assert two["crf"][steps]["confusion_matrix"] == one["crf"][steps]["confusion_matrix"]
        assert sum(map(sum, one["crf"][steps]["confusion_matrix"])) == sum(map(sum, one["confusion_matrix"]))
    # the training run's own distributed evaluation saw the same matrix's metrics
    assert metrics["final"]["miou"] == pytest.approx(one["miou"])
