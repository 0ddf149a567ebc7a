"""Every config group composes; bad keys and choices give readable errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segrepro.config import CONFIG_DIR, ConfigError, check_overrides, compose_config

GROUPS = ["model", "loss", "data", "optim", "trainer", "crf", "experiment"]


def choices(group):
    root = Path(CONFIG_DIR) / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in choices(g)])
def test_every_choice_composes_and_resolves(group, choice):
    cfg = compose_config([f"{group}={choice}"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["loss"]["_target_"].startswith("segrepro.losses.")
    assert container["data"]["num_classes"] > 1


def test_required_names_exist():
    assert {"deeplabv2_r101", "deeplabv3_r101", "deeplabv3plus_r101", "deeplabv3plus_x65",
            "deeplabv3plus_r18"} <= set(choices("model"))
    cfg = compose_config([])
    for key in ("data.root", "data.crop_size", "data.batch_size", "data.num_workers", "optim.lr",
                "trainer.max_iters", "trainer.eval_every", "trainer.resume", "trainer.sync_bn",
                "trainer.freeze_bn", "trainer.seed"):
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key
    assert cfg.data.name == "synthetic" and cfg.model.encoder == "resnet18"


@pytest.mark.parametrize("override,named", [
    ("trainer.max_itrs=2", ["trainer.max_itrs", "max_iters", "eval_every"]),
    ("data.crop=3", ["data.crop", "crop_size", "batch_size"]),
    ("optim.learning_rate=1", ["optim.learning_rate", "lr", "momentum"]),
])
def test_unknown_key_names_key_and_valid_keys(override, named):
    with pytest.raises(ConfigError) as info:
        check_overrides([override])
    for word in named:
        assert word in str(info.value)


def test_unknown_choice_lists_valid_choices():
    with pytest.raises(ConfigError) as info:
        check_overrides(["loss=cross_entropy"])
    assert "cross_entropy" in str(info.value) and "bce" in str(info.value)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="max_iters"):
        check_overrides(["trainer.max_iters=many"])
