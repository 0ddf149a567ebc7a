"""The papers' settings (configs/experiment/): their values, and one tiny training iteration of
each (every stage) on the miniature VOC + SBD and Cityscapes trees."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from segrepro.config import compose_config
from segrepro.engine.checkpoint import load_checkpoint
from segrepro.train import run
from tests.test_data_cityscapes import prepared_cityscapes
from tests.test_data_voc import prepared_voc

# The settings of ../shared/spec/tables.md, per experiment.
PAPER = {
    "lad/voc_deeplabv2": {
        "model.arch": "deeplabv2", "model.encoder": "resnet101", "model.output_stride": 8,
        "model.upsampling": "deconv", "model.pretrained": True,
        "data.name": "voc", "data.train_split": "trainaug", "data.val_split": "val", "data.batch_size": 2,
        "data.crop_size": 321, "data.scale_range": [0.5, 1.5], "data.flip": True,
        "optim.lr": 2.5e-4, "optim.momentum": 0.9, "optim.power": 0.9, "optim.warmup_iters": 0,
        "trainer.max_iters": 20000, "stages": [],
        # DeepLab v2's, which the paper does not restate (docs/fidelity.md)
        "optim.weight_decay": 5e-4, "trainer.freeze_bn": True, "optim.head_lr_mult": 10.0,
        "optim.head_bias_lr_mult": 20.0, "optim.head_bias_decay_mult": 0.0, "model.multi_grid": None,
        "trainer.amp": False,
    },
    "ssl/voc_deeplabv3": {
        "model.arch": "deeplabv3", "model.encoder": "resnet101", "model.output_stride": 16,
        "model.pretrained": True, "data.name": "voc", "data.train_split": "trainaug", "data.batch_size": 12,
        "data.crop_size": 513, "data.scale_range": [0.5, 2.0], "optim.lr": 0.007, "optim.momentum": 0.9,
        "optim.weight_decay": 1e-4, "optim.power": 0.9, "optim.warmup_iters": 100, "optim.warmup_lr": 0.001,
        "trainer.max_iters": 30000, "trainer.freeze_bn": False,
        # DeepLabv3's multi-grid, TF DeepLab's doubled and unregularized logits bias, float32 (docs/fidelity.md)
        "model.multi_grid": [1, 2, 4], "optim.head_lr_mult": 1.0, "optim.head_bias_lr_mult": 2.0,
        "optim.head_bias_decay_mult": 0.0, "trainer.amp": False,
    },
    "ssl/voc_deeplabv3plus": {
        "model.arch": "deeplabv3plus", "model.encoder": "tu-xception65.tf_in1k", "model.output_stride": 16,
        "data.crop_size": 393, "data.batch_size": 12, "data.mean": [0.5, 0.5, 0.5], "optim.lr": 0.007,
        "trainer.max_iters": 30000, "model.multi_grid": None, "optim.head_bias_lr_mult": 2.0,
        "optim.head_bias_decay_mult": 0.0, "trainer.amp": False,
    },
    "ssl/voc_deeplabv3_crop321": {
        "model.arch": "deeplabv3", "data.crop_size": 321, "data.batch_size": 16, "optim.lr": 0.007,
        "model.multi_grid": [1, 2, 4], "optim.head_bias_lr_mult": 2.0, "optim.head_bias_decay_mult": 0.0,
        "trainer.amp": False,
    },
    "ssl/cityscapes_deeplabv3": {
        "model.arch": "deeplabv3", "model.encoder": "resnet101", "model.output_stride": 16,
        "data.name": "cityscapes", "data.train_split": "train", "data.val_split": "val", "data.num_classes": 19,
        "data.crop_size": 669, "data.batch_size": 8, "data.scale_range": [0.75, 1.25], "optim.lr": 0.007,
        "optim.warmup_iters": 100, "optim.weight_decay": 1e-4, "trainer.max_iters": 90000, "stages": [],
        "model.multi_grid": [1, 2, 4], "optim.head_lr_mult": 1.0, "optim.head_bias_lr_mult": 2.0,
        "optim.head_bias_decay_mult": 0.0, "trainer.amp": False,
    },
}
VOC_FINETUNE = {"data.train_split": "train", "optim.lr": 0.0005, "optim.warmup_lr": 0.0001,
                "trainer.max_iters": 20000, "trainer.freeze_bn": True}
TINY = ["trainer.max_iters=1", "data.crop_size=33", "data.batch_size=2", "model.pretrained=false", "model.decoder_channels=16",
        "data.num_workers=0", "trainer.device=cpu", "trainer.progress=false", "trainer.eval_every=0"]


def tiny_encoder(cfg) -> str:
    """The smallest ResNet that runs the recipe's model: multi-grid needs bottleneck units (resnet50)."""
    return "model.encoder=resnet50" if cfg.model.multi_grid else "model.encoder=resnet18"


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_settings(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    for key, value in PAPER[experiment].items():
        expected = pytest.approx(value) if isinstance(value, float) else value
        assert OmegaConf.select(cfg, key) == expected, key
    if experiment.startswith("ssl/voc"):
        assert [stage.name for stage in cfg.stages] == ["trainaug", "finetune"]
        finetune = OmegaConf.merge(cfg, {k: v for k, v in cfg.stages[1].items() if k != "name"})
        for key, value in VOC_FINETUNE.items():
            assert OmegaConf.select(finetune, key) == value, key


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_experiment_accepts_a_loss_and_its_overrides(experiment):
    cfg = compose_config([f"experiment={experiment}", "loss=lad", "loss.kernel_size=3", "trainer.max_iters=7"])
    assert cfg.loss._target_.endswith("LADLoss") and cfg.loss.kernel_size == 3 and cfg.trainer.max_iters == 7


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    return {"voc": prepared_voc(base), "cityscapes": prepared_cityscapes(base / "cityscapes")}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_one_iteration_of_every_stage(experiment, roots, tmp_path):
    data = "cityscapes" if "cityscapes" in experiment else "voc"
    overrides = TINY + [f"data.root={roots[data]}"]
    overrides.append(tiny_encoder(compose_config([f"experiment={experiment}"])))
    cfg = compose_config([f"experiment={experiment}"] + overrides)
    final = run(cfg, tmp_path, overrides)
    assert 0.0 <= final["miou"] <= 1.0 and len(final["iou"]) == cfg.data.num_classes
    if not cfg.stages:
        state = load_checkpoint(tmp_path / "checkpoints" / "step_0000001.pt")
        assert state["config"]["model"]["arch"] == PAPER[experiment]["model.arch"]
        return
    first = load_checkpoint(tmp_path / "stage1-trainaug" / "checkpoints" / "step_0000001.pt")["config"]
    second = load_checkpoint(tmp_path / "stage2-finetune" / "checkpoints" / "step_0000001.pt")["config"]
    assert first["data"]["train_split"] == "trainaug" and first["optim"]["lr"] == pytest.approx(0.007)
    assert second["data"]["train_split"] == "train" and second["trainer"]["freeze_bn"]
    assert second["optim"]["lr"] == pytest.approx(0.0005) and second["optim"]["warmup_lr"] == pytest.approx(0.0001)
    assert second["trainer"]["max_iters"] == 1  # the command line shrinks every stage
    assert second["trainer"]["init_from"].endswith("stage1-trainaug/checkpoints/step_0000001.pt")
