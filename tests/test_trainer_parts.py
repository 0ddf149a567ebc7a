"""The trainer receives built parts; frozen batch norm stays frozen through training and evaluation
(the LAD recipe's); a batch of one image per process is a clear error unless BN is frozen."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segrepro.config import compose_config
from segrepro.engine.build import build_training, check_batchnorm_batch
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


def batchnorm_tensors(model):
    """Every BN layer's running statistics and affine parameters, copied."""
    return {f"{i}.{k}": v.clone() for i, layer in enumerate(model.batchnorm_layers())
            for k, v in layer.state_dict().items()}


def assert_batchnorm_frozen(parts, before):
    layers = parts.model.batchnorm_layers()
    assert layers and not any(layer.training for layer in layers)
    assert not any(p.requires_grad for layer in layers for p in layer.parameters())
    optimized = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for layer in layers for p in layer.parameters())
    after = batchnorm_tensors(parts.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_lad_recipe_keeps_batchnorm_frozen_through_a_step_and_an_evaluation(tmp_path):
    """LAD trains DeepLab v2 as DeepLab v2 did: BN at its ImageNet statistics, affine parameters fixed."""
    cfg = compose_config(["experiment=lad/voc_deeplabv2", "debug=tiny", "data=synthetic", "model.encoder=resnet18",
                          "model.pretrained=false", "trainer.max_iters=2"])
    assert cfg.trainer.freeze_bn
    parts = build_training(cfg, tmp_path, CPU)
    trainer = Trainer(cfg, parts, tmp_path, CPU)
    before = batchnorm_tensors(parts.model)
    head = parts.model.segmentation_head.branches[0].weight.detach().clone()
    trainer.net.train()
    trainer.train_step(*next(trainer.batches()))
    assert not torch.equal(head, parts.model.segmentation_head.branches[0].weight)  # the step trained
    assert_batchnorm_frozen(parts, before)
    trainer.evaluate()
    assert parts.model.training  # the evaluation put the model back in training mode, BN excepted
    assert_batchnorm_frozen(parts, before)


def test_one_image_fails_inside_torch_only_in_the_image_pooling_branch():
    """What the check below prevents: DeepLabv3's image-level BN sees one value per channel in training;
    frozen, it works, and DeepLab v2 (no such branch) works with one image anyway."""
    model = build_model({"arch": "deeplabv3", "encoder": "resnet18", "decoder_channels": 8}, 3).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model(torch.randn(1, 3, 33, 33))
    model.freeze_batchnorm()
    assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)
    deeplabv2 = build_model({"arch": "deeplabv2", "encoder": "resnet18", "atrous_rates": [6, 12]}, 3).train()
    assert deeplabv2(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)


@pytest.mark.parametrize("overrides, world_size", [(["data.batch_size=1"], 1), (["data.batch_size=2"], 2),
                                                    (["data.batch_size=1", "trainer.sync_bn=true"], 1)])
def test_one_image_per_process_is_an_error_naming_the_batch_and_the_ways_out(tiny_cfg, tmp_path, overrides,
                                                                               world_size):
    cfg = tiny_cfg("model.arch=deeplabv3", *overrides)
    dist = DistInfo(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError) as info:
        build_training(cfg, tmp_path, dist)
    message = str(info.value)
    for words in (f"data.batch_size={cfg.data.batch_size} over {world_size} process(es)", "one image per process",
                  "trainer.sync_bn=true", "trainer.freeze_bn=true", "a larger data.batch_size"):
        assert words in message


@pytest.mark.parametrize("overrides, world_size", [
    (["model.arch=deeplabv3", "trainer.freeze_bn=true"], 1),  # BN at its running statistics
    (["model.arch=deeplabv3", "trainer.sync_bn=true", "data.batch_size=2"], 2),  # statistics over 2 images
    (["model.arch=deeplabv2", "model.atrous_rates=[6,12]"], 1),  # no image pooling: BN sees H x W values
])
def test_one_image_per_process_passes_where_batch_norm_can_work(tiny_cfg, overrides, world_size):
    check_batchnorm_batch(tiny_cfg("data.batch_size=1", *overrides), world_size)


@pytest.mark.slow
def test_one_image_batches_train_with_frozen_batchnorm(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.arch=deeplabv3", "data.batch_size=1", "trainer.freeze_bn=true", "trainer.max_iters=1",
                   "trainer.eval_every=0")
    parts = build_training(cfg, tmp_path, CPU)
    assert parts.loader.batch_size == 1
    final = Trainer(cfg, parts, tmp_path, CPU).fit()
    assert parts.model.segmentation_head[0].weight.grad is not None and 0.0 <= final["miou"] <= 1.0


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


def test_sync_batchnorm_keeps_the_activation_of_timms_bn_act_layers():
    """Xception-65 (timm) fuses BN and its ReLU in one BatchNormAct2d; torch's SyncBatchNorm conversion
    would keep the BN and drop the ReLU."""
    import timm.layers

    from segrepro.engine.build import sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), timm.layers.BatchNormAct2d(4), torch.nn.BatchNorm2d(4))
    synced = sync_batchnorm(model)
    assert isinstance(synced[1], torch.nn.SyncBatchNorm) and isinstance(synced[1].act, torch.nn.ReLU)
    assert isinstance(synced[2], torch.nn.SyncBatchNorm)
