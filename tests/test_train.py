"""End-to-end training on tiny synthetic data: outputs, exact resume, stages, clean errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from segrepro.engine.checkpoint import load_checkpoint
from segrepro.engine.trainer import NonFiniteLossError, Trainer
from segrepro.models import SegmentationNet
from segrepro.train import run

from .conftest import TINY


def test_three_iterations_write_checkpoint_tensorboard_and_metrics(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_iters=3", "trainer.eval_every=2", "trainer.ckpt_every=2")
    final = run(cfg, tmp_path, [])
    assert set(final) >= {"miou", "iou", "pixel_acc", "mean_acc"}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "step_0000002.pt", "step_0000003.pt"]
    state = load_checkpoint(tmp_path / "checkpoints" / "step_0000003.pt")
    assert state["step"] == 3 and state["config"]["trainer"]["max_iters"] == 3
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evals"]] == [2, 3]
    assert metrics["final"]["miou"] == pytest.approx(final["miou"])
    assert len(metrics["final"]["iou"]) == cfg.data.num_classes
    assert (tmp_path / "config.yaml").is_file()


def test_tensorboard_holds_losses_lr_miou_and_images(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_cfg("trainer.max_iters=2", "loss=bce"), tmp_path, [])
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/miou"} <= scalars
    assert any(tag.startswith("val_iou/") for tag in scalars)
    assert {"val/input", "val/ground_truth", "val/prediction"} <= set(events.Tags()["images"])


def weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tiny_cfg, tmp_path, monkeypatch):
    # 8 training images at batch 2: 4 steps an epoch, so the step-3 checkpoint sits mid-epoch
    common = ("trainer.max_iters=6", "trainer.ckpt_every=3", "trainer.eval_every=0", "trainer.keep_last=5")
    run(tiny_cfg(*common), tmp_path / "straight", [])

    train_step = Trainer.train_step

    def crash_at_step_5(self, images, labels):
        if self.step == 4:
            raise KeyboardInterrupt  # the machine goes away during step 5
        return train_step(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*common), tmp_path / "resumed", [])
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step_*")] == ["step_0000003.pt"]

    run(tiny_cfg(*common, "trainer.resume=auto"), tmp_path / "resumed", [])
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000006.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_0000006.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    step3 = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000003.pt")["model"]
    assert any(not torch.equal(a["model"][k], step3[k]) for k in step3 if step3[k].is_floating_point())


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_terms_and_intact_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("trainer.max_iters=4", "trainer.ckpt_every=2", "trainer.eval_every=0")
    forward = torch.nn.Module.__call__
    calls = {"n": 0}

    def poisoned(module, *args, **kwargs):
        out = forward(module, *args, **kwargs)
        if isinstance(module, SegmentationNet) and module.training:
            calls["n"] += 1
            if calls["n"] == 3:
                out = out * float("nan")
        return out

    monkeypatch.setattr(torch.nn.Module, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        run(cfg, tmp_path, [])
    message = str(info.value)
    assert "step 3" in message and "nan" in message and "step_0000002.pt" in message
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "checkpoints" / "step_0000002.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_stages_chain_weights_and_honour_command_line_overrides(tiny_cfg, tmp_path):
    stages = "stages=[{name:first},{name:second,optim:{lr:0.001},trainer:{max_iters:50,freeze_bn:true}}]"
    cfg = tiny_cfg("trainer.max_iters=2", "trainer.eval_every=0", stages)
    run(cfg, tmp_path, ["trainer.max_iters=2"])  # what the user typed wins over the stage's 50
    first = load_checkpoint(tmp_path / "stage1-first" / "checkpoints" / "step_0000002.pt")
    second = load_checkpoint(tmp_path / "stage2-second" / "checkpoints" / "step_0000002.pt")
    assert second["config"]["optim"]["lr"] == 0.001 and second["config"]["trainer"]["freeze_bn"]
    assert second["config"]["trainer"]["init_from"].endswith("stage1-first/checkpoints/step_0000002.pt")
    # frozen BN: the running statistics of stage 2 are stage 1's
    bn = [k for k in first["model"] if k.endswith("running_mean")]
    assert bn and all(torch.equal(first["model"][k], second["model"][k]) for k in bn)
    # a second call finds both stages done and trains nothing
    again = run(tiny_cfg("trainer.max_iters=2", "trainer.eval_every=0", "trainer.resume=auto", stages),
                tmp_path, ["trainer.max_iters=2"])
    assert again["miou"] == pytest.approx(second["evals"][-1]["miou"])


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "segrepro.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_cli_prints_the_composed_config(tmp_path):
    out = cli("train", "model=deeplabv3_r101", "data.crop_size=321", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "encoder: resnet101" in out.stdout and "crop_size: 321" in out.stdout


@pytest.mark.slow
def test_cli_names_an_unknown_key_and_the_valid_ones(tmp_path):
    out = cli("train", "trainer.max_itrs=2", cwd=tmp_path)
    assert out.returncode == 2
    assert "trainer.max_itrs" in out.stderr and "max_iters" in out.stderr and "eval_every" in out.stderr
    out = cli("train", "model=deeplab_v9", cwd=tmp_path)
    assert out.returncode == 2
    assert "deeplab_v9" in out.stderr and "deeplabv3_r101" in out.stderr


@pytest.mark.slow
def test_cli_trains_then_evaluates_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    out = cli("train", *TINY, "trainer.max_iters=2", "loss=bce", "optim.lr=0.01", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mIoU" in out.stdout and f"tensorboard --logdir {run_dir}" in out.stdout
    ckpt = run_dir / "checkpoints" / "step_0000002.pt"
    out = cli("eval", f"checkpoint={ckpt}", "trainer.progress=false", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    saved = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert result["miou"] == pytest.approx(saved["miou"])  # same model, same val split: same numbers
    assert len(result["confusion_matrix"]) == 6


@pytest.mark.slow
def test_missing_checkpoint_is_a_clean_error(tmp_path):
    out = cli("eval", f"checkpoint={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 1
    assert "nope.pt" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_loss_terms_reach_tensorboard_and_center_loss_is_wired(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_cfg("trainer.max_iters=2", "loss=ssl"), tmp_path / "ssl", [])
    scalars = set(EventAccumulator(str(tmp_path / "ssl" / "tb")).Reload().Tags()["scalars"])
    # SSL Figure 3 and 4 statistics
    assert {"loss/bce", "loss/ssl", "loss/hard_fraction", "loss/e_max", "loss/e_mean", "loss/e_median",
            "loss/norm_pred_min", "loss/norm_pred_max", "loss/norm_gt_min", "loss/norm_gt_max"} <= scalars

    run(tiny_cfg("trainer.max_iters=2", "loss=center"), tmp_path / "center", [])
    state = load_checkpoint(tmp_path / "center" / "checkpoints" / "step_0000002.pt")
    centers = state["loss"]["centers"]
    assert centers.shape == (6, 256)  # feat_dim filled from the model's decoder features
    assert centers.abs().sum() > 0  # moved from their zero start by update_centers


@pytest.mark.slow
def test_affinity_loss_is_told_the_training_progress(tiny_cfg, tmp_path, monkeypatch):
    from segrepro.losses import AffinityFieldLoss

    seen = []
    set_progress = AffinityFieldLoss.set_progress
    monkeypatch.setattr(AffinityFieldLoss, "set_progress", lambda self, f: (seen.append(f), set_progress(self, f)))
    run(tiny_cfg("trainer.max_iters=4", "loss=affinity", "trainer.eval_every=0"), tmp_path, [])
    assert seen == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("overrides", [
    ["loss=lad", "loss.kernel_size=7"],
    ["loss=ssl", "loss.region_size=7", "loss.sigma=3.0", "loss.beta=0.12"],
    ["loss=ssim", "loss.form=eq9"],
    ["loss=affinity"],
    ["loss=center"],
    ["loss=focal"],
])
@pytest.mark.slow
def test_every_loss_trains_from_the_command_line_overrides(tiny_cfg, tmp_path, overrides):
    final = run(tiny_cfg("trainer.max_iters=2", "trainer.eval_every=0", *overrides), tmp_path, overrides)
    assert 0.0 <= final["miou"] <= 1.0
    state = load_checkpoint(tmp_path / "checkpoints" / "step_0000002.pt")
    target = state["config"]["loss"]["_target_"].rsplit(".", 1)[1]
    assert target == {"lad": "LADLoss", "ssl": "SSLLoss", "ssim": "SSIMLoss", "affinity": "AffinityFieldLoss",
                      "center": "CenterLoss", "focal": "FocalLoss"}[overrides[0].split("=")[1]]
    for override in overrides[1:]:
        key, value = override.split("=")
        assert str(state["config"]["loss"][key.split(".")[1]]) == value
