"""Adding a loss is one module plus one YAML file: nothing in segrepro is edited or registered."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from segrepro.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

MODULE = '''
import torch
import torch.nn.functional as F

from segrepro.losses import SegmentationLoss


class CountingCrossEntropy(SegmentationLoss):
    """Cross entropy scaled by ``weight``; counts the trainer's hook calls in buffers (saved in checkpoints)."""

    def __init__(self, num_classes, weight=1.0, ignore_index=255):
        super().__init__()
        self.num_classes, self.weight, self.ignore_index = num_classes, weight, ignore_index
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))

    def set_progress(self, fraction):
        self.progress.fill_(fraction)

    def forward(self, logits, target):
        assert logits.shape[1] == self.num_classes
        return self.weight * F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    def terms(self, logits, target):
        return {"progress": self.progress}

    def after_step(self, logits, target):
        assert not logits.requires_grad
        self.steps += 1
'''

YAML = """\
_target_: counting_loss.CountingCrossEntropy
num_classes: null  # filled with data.num_classes by the trainer
weight: 0.5
ignore_index: ${data.ignore_index}
"""


def test_a_loss_from_a_new_module_and_yaml_trains_through_the_cli(tmp_path):
    plugin = tmp_path / "plugin"
    (plugin / "configs" / "loss").mkdir(parents=True)
    (plugin / "counting_loss.py").write_text(textwrap.dedent(MODULE))
    (plugin / "configs" / "loss" / "counting.yaml").write_text(YAML)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "segrepro.cli", "train", f"hydra.searchpath=[file://{plugin / 'configs'}]",
         "loss=counting", "debug=tiny", "trainer.max_iters=4", "trainer.eval_every=0", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "step_0000004.pt")
    assert state["config"]["loss"]["_target_"] == "counting_loss.CountingCrossEntropy"
    assert int(state["loss"]["steps"]) == 4  # after_step once per step
    assert float(state["loss"]["progress"]) == 3 / 4  # set_progress before the last step's forward
