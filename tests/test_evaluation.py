"""Evaluation with multi-scale / flipped inference and dense-CRF refinement."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from segrepro.engine.build import build_evaluator
from segrepro.engine.distributed import DistInfo
from segrepro.engine.evaluator import to_uint8_images
from segrepro.train import run

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class ColourNet(torch.nn.Module):
    """A pointwise 'model' (1x1 convolution): it commutes with flips; records the input sizes it sees."""

    def __init__(self, num_classes):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        self.sizes = []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        return self.conv(images)


def test_undoing_the_normalization_gives_back_the_uint8_image():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 5, 7, 3), generator=g, dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    normalized = (rgb.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    assert (to_uint8_images(normalized, mean, std) == rgb.numpy()).all()


def test_one_scale_without_flip_is_the_plain_argmax_and_flip_averages_mirrored_passes(tiny_cfg):
    cfg = tiny_cfg()
    plain = build_evaluator(cfg, CPU)
    model = ColourNet(cfg.data.num_classes)
    base = plain.run(model)
    assert model.sizes == [(48, 48)] * len(model.sizes) and len(model.sizes) == 2  # 4 val images, batches of 2
    # A pointwise model commutes with the flip: the averaged probabilities give the same predictions.
    flipped = build_evaluator(tiny_cfg("eval.flip=true", "eval.scales=[1.0,1.0]"), CPU).run(model)
    assert torch.equal(flipped.matrix.mat, base.matrix.mat)
    model.sizes.clear()
    multi = build_evaluator(tiny_cfg("eval.scales=[0.5,1.0]"), CPU).run(model)
    assert sorted(set(model.sizes)) == [(24, 24), (48, 48)]
    assert multi.matrix.mat.sum() == base.matrix.mat.sum()  # every labelled pixel counted once
    with pytest.raises(ValueError, match="eval.scales"):
        build_evaluator(tiny_cfg("eval.scales=[0.0]"), CPU)


def test_crf_refines_at_every_step_count_from_one_pass(tiny_cfg):
    cfg = tiny_cfg("crf=dense", "crf.steps=[1,2]", "crf.workers=1")
    model = ColourNet(cfg.data.num_classes)
    result = build_evaluator(cfg, CPU).run(model, with_crf=True)
    assert len(model.sizes) == 2  # one forward per batch, whatever the number of step counts
    assert set(result.crf) == {1, 2} and result.crf_seconds_per_image > 0
    for steps, (metrics, matrix) in result.crf.items():
        assert matrix.mat.sum() == result.matrix.mat.sum()
        assert 0 <= metrics["miou"] <= 1
    assert not torch.equal(result.crf[1][1].mat, result.matrix.mat)  # the CRF changed predictions
    # Off unless asked: the same evaluator without with_crf, or crf=none, runs no CRF.
    assert build_evaluator(cfg, CPU).run(model).crf == {}
    assert build_evaluator(tiny_cfg("crf=none"), CPU).run(model, with_crf=True).crf == {}


@pytest.mark.slow
def test_training_evaluates_with_crf_at_the_end_only_and_eval_cli_writes_every_step_count(tiny_cfg, tmp_path):
    overrides = ["trainer.max_iters=2", "trainer.eval_every=1", "crf=dense", "crf.steps=[1,2]", "crf.workers=1"]
    run(tiny_cfg(*overrides), tmp_path / "run", [])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "crf" not in metrics["evals"][0] and set(metrics["final"]["crf"]) == {"1", "2"}
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000002.pt"
    out = subprocess.run([sys.executable, "-m", "segrepro.cli", "eval", f"checkpoint={checkpoint}", "crf=dense",
                          "crf.steps=[1,2]", "crf.workers=2", f"hydra.run.dir={tmp_path / 'eval'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no CRF" in out.stdout and "CRF-1" in out.stdout and "CRF-2" in out.stdout and "s per image" in out.stdout
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(report["crf"]) == {"1", "2"} and report["crf_seconds_per_image"] > 0
    assert report["miou"] == pytest.approx(metrics["final"]["miou"])  # the same checkpoint, the same images
    assert report["crf"]["2"]["miou"] == pytest.approx(metrics["final"]["crf"]["2"]["miou"])
