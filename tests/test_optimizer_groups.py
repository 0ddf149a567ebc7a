"""The head's learning-rate multipliers: the groups they form, the recipes' values, the schedule
over every group, and an exact resume with groups."""
from __future__ import annotations

import pytest
import torch

from segrepro.config import OptimConfig, compose_config
from segrepro.engine.build import build_optimizer
from segrepro.engine.checkpoint import load_checkpoint
from segrepro.engine.schedule import poly_lr_scheduler
from segrepro.models import build_model
from segrepro.train import run

from .conftest import crash_in_step

# An experiment at a size a test can build: its model on resnet18, no download, no multi-grid.
SMALL = ["model.encoder=resnet18", "model.pretrained=false", "model.multi_grid=null", "model.decoder_channels=16"]


def group_of(optimizer, param) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def deeplabv2(**optim):
    torch.manual_seed(0)
    model = build_model({"arch": "deeplabv2", "encoder": "resnet18", "atrous_rates": [6, 12],
                         "upsampling": "deconv"}, 3)
    return model, build_optimizer(model, OptimConfig(**optim))


def test_default_multipliers_keep_one_group_of_every_parameter():
    model, optimizer = deeplabv2(lr=0.01)
    assert len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))


def test_head_weights_and_biases_get_their_multipliers_and_nothing_else_does():
    model, optimizer = deeplabv2(lr=0.01, head_lr_mult=10, head_bias_lr_mult=20)
    head = model.segmentation_head.branches
    assert [len(g["params"]) for g in optimizer.param_groups] == [
        len(list(model.parameters())) - 2 * len(head), len(head), len(head)]
    assert all(group_of(optimizer, branch.weight)["lr"] == pytest.approx(0.1) for branch in head)
    assert all(group_of(optimizer, branch.bias)["lr"] == pytest.approx(0.2) for branch in head)
    for param in (model.encoder.conv1.weight, model.encoder.bn1.bias, model.upsample.deconv.weight):
        assert group_of(optimizer, param)["lr"] == pytest.approx(0.01)


def test_head_biases_take_their_own_weight_decay_multiplier():
    """Caffe's decay_mult 0 on DeepLab v2's classifier biases (TF-slim: biases unregularized)."""
    model, optimizer = deeplabv2(lr=0.01, weight_decay=5e-4, head_lr_mult=10, head_bias_lr_mult=20,
                                 head_bias_decay_mult=0)
    head = model.segmentation_head.branches
    assert all(group_of(optimizer, branch.bias)["weight_decay"] == 0.0 for branch in head)
    assert all(group_of(optimizer, branch.weight)["weight_decay"] == 5e-4 for branch in head)
    assert group_of(optimizer, model.encoder.conv1.weight)["weight_decay"] == 5e-4
    _, same_rates = deeplabv2(lr=0.01, weight_decay=5e-4, head_bias_decay_mult=0)  # a group of its own
    assert sorted(g["weight_decay"] for g in same_rates.param_groups) == [0.0, 5e-4]


def test_every_group_follows_the_slow_start_and_the_poly_schedule_at_its_multiple():
    model, optimizer = deeplabv2(lr=0.01, power=0.9, warmup_iters=3, warmup_lr=0.001,
                                 head_lr_mult=10, head_bias_lr_mult=20)
    scheduler = poly_lr_scheduler(optimizer, OptimConfig(lr=0.01, power=0.9, warmup_iters=3, warmup_lr=0.001), 10)
    params = {1: model.encoder.conv1.weight, 10: model.segmentation_head.branches[0].weight,
              20: model.segmentation_head.branches[1].bias}
    for step in range(10):
        base = 0.001 if step < 3 else 0.01 * (1 - step / 10) ** 0.9
        for multiplier, param in params.items():
            assert group_of(optimizer, param)["lr"] == pytest.approx(multiplier * base), (step, multiplier)
        optimizer.step()
        scheduler.step()


def test_negative_multiplier_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="optim.head_bias_lr_mult must be at least 0"):
        deeplabv2(lr=0.01, head_bias_lr_mult=-1)


def recipe_optimizer(experiment: str):
    cfg = compose_config([f"experiment={experiment}"] + SMALL)
    model = build_model(cfg.model, cfg.data.num_classes)
    return cfg, model, build_optimizer(model, cfg.optim)


def test_lad_recipe_trains_the_aspp_classifier_at_10x_and_its_biases_at_20x():
    cfg, model, optimizer = recipe_optimizer("lad/voc_deeplabv2")
    lr = cfg.optim.lr
    assert lr == pytest.approx(2.5e-4)
    for branch in model.segmentation_head.branches:
        assert group_of(optimizer, branch.weight)["lr"] == pytest.approx(10 * lr)
        assert group_of(optimizer, branch.bias)["lr"] == pytest.approx(20 * lr)
    assert group_of(optimizer, model.encoder.layer4[0].conv1.weight)["lr"] == pytest.approx(lr)


@pytest.mark.parametrize("experiment", ["ssl/voc_deeplabv3", "ssl/voc_deeplabv3plus", "ssl/cityscapes_deeplabv3"])
def test_ssl_recipes_double_the_logits_bias_only(experiment):
    """TF DeepLab: every bias at 2x, and in DeepLabv3 / v3+ only the logits layer has one."""
    cfg, model, optimizer = recipe_optimizer(experiment)
    logits = model.segmentation_head[0]
    doubled = [g for g in optimizer.param_groups if g["lr"] == pytest.approx(2 * cfg.optim.lr)]
    assert len(doubled) == 1 and len(doubled[0]["params"]) == 1 and doubled[0]["params"][0] is logits.bias
    assert group_of(optimizer, logits.weight)["lr"] == pytest.approx(cfg.optim.lr)
    assert len(optimizer.param_groups) == 2


@pytest.mark.slow
def test_resume_with_head_groups_equals_the_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch):
    common = ("trainer.max_iters=4", "trainer.ckpt_every=2", "trainer.eval_every=0", "trainer.keep_last=5",
              "optim.head_lr_mult=10", "optim.head_bias_lr_mult=20", "optim.warmup_iters=1")
    run(tiny_cfg(*common), tmp_path / "straight", [])
    crash_in_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*common), tmp_path / "resumed", [])
    monkeypatch.undo()
    run(tiny_cfg(*common, "trainer.resume=auto"), tmp_path / "resumed", [])
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "step_0000004.pt") for name in ("straight", "resumed"))
    groups = [[(g["lr"], g["params"]) for g in state["optimizer"]["param_groups"]] for state in (a, b)]
    assert len(groups[0]) == 3 and groups[0] == groups[1]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
