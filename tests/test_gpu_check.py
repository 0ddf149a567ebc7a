"""scripts/gpu_check.sh and scripts/bench_train.py on the CPU, at tiny sizes.

The whole ``gpu_check.sh --device cpu --small`` takes about 3 minutes on 2 cores, too long for the suite: it is
checked for syntax and arguments only, and its training step, ``bench_train.py``, is run at tiny sizes.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
BENCH_TRAIN = REPO / "scripts" / "bench_train.py"


def test_gpu_check_parses_and_rejects_bad_arguments(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0 and "--device cuda|cpu" in usage.stdout and "--small" in usage.stdout
    for bad in (["--device", "tpu"], ["--bogus"], ["--budget", "soon"]):
        run = subprocess.run(["bash", str(SCRIPT), *bad, "--out", str(tmp_path)], capture_output=True, text=True,
                             timeout=30)
        assert run.returncode == 2, (bad, run.stdout, run.stderr)


def test_bench_train_trainer_and_bare_loop_agree_on_tiny_sizes(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(BENCH_TRAIN), "--device", "cpu", "--small", "--iters", "2", "--warmup", "0",
         "--crop", "33", "--amp", "fp32", "--json", str(out), "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| trainer |" in run.stdout and "| bare loop |" in run.stdout and "trainer / bare it/s" in run.stdout
    result = json.loads(out.read_text())
    trainer, bare = result["trainer"], result["bare"]
    assert len(trainer["losses"]) == len(bare["losses"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in trainer["losses"] + bare["losses"])
    # Same initial weights, the same batches, the same steps, on a CPU: the same loss curve.
    assert trainer["losses"] == pytest.approx(bare["losses"], rel=1e-6)
    assert trainer["it_per_s"] > 0 and bare["it_per_s"] > 0 and result["pass"] is None  # no target on a CPU
    assert (tmp_path / "runs" / "config.yaml").is_file()
