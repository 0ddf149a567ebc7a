"""Shared fixtures: a tiny, fast training config on the synthetic data."""
from __future__ import annotations

from pathlib import Path

import pytest

from segrepro.config import compose_config

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# A run small enough for a unit test: configs/debug/tiny.yaml (ResNet-18 DeepLabV3+, 33x33 crops,
# batches of 2, CPU) and its synthetic part, configs/debug/data/tiny_synthetic.yaml (48x48
# images, 8 train and 4 val samples). Overrides given after it win.
TINY = ["debug=tiny"]


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides)``: the composed training config for a tiny run (``debug=tiny``)."""
    def make(*overrides):
        return compose_config(TINY + list(overrides))
    return make


@pytest.fixture(params=["per_image", "whole_batch"])
def batch_strategy(request):
    """Runs the test once per image and once over the whole batch: the windowed losses' CPU and GPU paths."""
    from segrepro.losses import batch_strategy as strategy

    with strategy(request.param):
        yield request.param


def crash_in_step(monkeypatch, step: int) -> None:
    """Make the trainer raise KeyboardInterrupt when step ``step`` (1-based) starts, as if the machine
    went away then; ``monkeypatch.undo()`` restores the trainer."""
    from segrepro.engine.trainer import Trainer

    train_step = Trainer.train_step

    def crashing(self, images, labels):
        if self.step == step - 1:
            raise KeyboardInterrupt
        return train_step(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", crashing)
