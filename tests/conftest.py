"""Shared fixtures: a tiny, fast training config on the synthetic data."""
from __future__ import annotations

from pathlib import Path

import pytest

from segrepro.config import compose_config

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# A run small enough for a unit test: ResNet-18 DeepLabV3+, 48x48 images, a handful of samples.
TINY = [
    "data.crop_size=33",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "data.params.image_size=[48,48]",
    "+data.params.num_samples={train:8,val:4}",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.log_every=1",
]


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides)``: the composed training config for a tiny run."""
    def make(*overrides):
        return compose_config(TINY + list(overrides))
    return make
