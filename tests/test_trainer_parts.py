"""The trainer receives built parts; frozen batch norm stays frozen through training and evaluation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segrepro.engine.build import build_training
from segrepro.engine.distributed import DistInfo
from segrepro.engine.trainer import Trainer
from segrepro.losses import SegmentationLoss
from segrepro.models import build_model

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def batchnorm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_batchnorm_stays_in_eval_mode_whatever_train_is_called_with():
    model = build_model({"encoder": "resnet18"}, 3)
    model.freeze_batchnorm()
    before = batchnorm_state(model)
    model.train()
    layers = model.batchnorm_layers()
    assert layers and not any(layer.training for layer in layers)
    assert not any(p.requires_grad for layer in layers for p in layer.parameters())
    assert model.training and model.encoder.conv1.training  # the rest trains
    model(torch.randn(2, 3, 33, 33))
    after = batchnorm_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_frozen_batchnorm_statistics_survive_training_with_evaluations(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_iters=3", "trainer.eval_every=1", "trainer.freeze_bn=true")
    parts = build_training(cfg, tmp_path, CPU)
    before = batchnorm_state(parts.model)
    Trainer(cfg, parts, tmp_path, CPU).fit()
    after = batchnorm_state(parts.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Without freezing, the same run moves them.
    cfg = tiny_cfg("trainer.max_iters=3", "trainer.eval_every=1")
    parts = build_training(cfg, tmp_path / "unfrozen", CPU)
    before = batchnorm_state(parts.model)
    Trainer(cfg, parts, tmp_path / "unfrozen", CPU).fit()
    assert not all(torch.equal(before[k], v) for k, v in batchnorm_state(parts.model).items())


class RecordingLoss(SegmentationLoss):
    """Cross entropy that records the hooks the trainer calls, in order."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def set_progress(self, fraction):
        self.calls.append(("set_progress", fraction))

    def forward(self, logits, target):
        self.calls.append(("forward", logits.requires_grad))
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=255)

    def terms(self, logits, target):
        self.calls.append(("terms", logits.requires_grad))
        return {"constant": torch.tensor(1.0)}

    def after_step(self, logits, target):
        self.calls.append(("after_step", logits.requires_grad))


@pytest.mark.slow
def test_trainer_calls_every_hook_of_a_loss_it_is_handed(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_iters=2", "trainer.eval_every=0", "trainer.log_every=1")
    parts = build_training(cfg, tmp_path, CPU)
    parts.loss = RecordingLoss()
    Trainer(cfg, parts, tmp_path, CPU).fit()
    assert parts.loss.calls == [
        ("set_progress", 0.0), ("forward", True), ("after_step", False), ("terms", False),
        ("set_progress", 0.5), ("forward", True), ("after_step", False), ("terms", False),
    ]
    assert Path(tmp_path, "metrics.json").is_file()
