"""Evaluation with multi-scale / flipped inference and dense-CRF refinement."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segrepro.engine.evaluator as evaluator_module
from segrepro.data import build_transform
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


def test_undoing_the_validation_pipeline_gives_back_the_uint8_image(tiny_cfg):
    cfg = tiny_cfg()
    transform = build_transform(cfg.data, train=False)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    normalized = torch.stack([transform(image, np.zeros(image.shape[:2], np.uint8))[0] for image in rgb])
    assert (to_uint8_images(normalized, cfg.data.mean, cfg.data.std) == rgb).all()


class MirrorBlindNet(torch.nn.Module):
    """A 3x3 convolution with random (not mirror-symmetric) weights; records the input sizes it sees."""

    def __init__(self, num_classes):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, num_classes, 3, padding=1)
        self.sizes = []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        return self.conv(images)


def predictions_by_hand(evaluator, model, passes):
    """The confusion matrix of ``argmax(mean over passes of pass(images))``, each ``pass(model, images)``
    giving scores at the input's size."""
    from segrepro.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(evaluator.num_classes, evaluator.ignore_index)
    with torch.no_grad():
        for images, labels in evaluator.loader:
            scores = sum(one(model, images) for one in passes) / len(passes)
            matrix.update(scores.argmax(1), labels)
    return matrix.mat


def resized_softmax(scale, flipped=False):
    def one(model, images):
        x = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                      align_corners=False)
        logits = model(x.flip(-1)).flip(-1) if flipped else model(x)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
    return one


def test_one_scale_without_flip_is_the_argmax_of_the_logits(tiny_cfg):
    evaluator = build_evaluator(tiny_cfg(), CPU)
    model = MirrorBlindNet(evaluator.num_classes)
    result = evaluator.run(model)
    assert torch.equal(result.matrix.mat, predictions_by_hand(evaluator, model, [lambda m, x: m(x)]))
    assert set(model.sizes) == {(48, 48)}


def test_flip_and_scales_average_the_softmax_of_every_pass(tiny_cfg):
    evaluator = build_evaluator(tiny_cfg("eval.flip=true", "eval.scales=[0.5,1.0]"), CPU)
    model = MirrorBlindNet(evaluator.num_classes)
    result = evaluator.run(model)
    assert {(24, 24), (48, 48)} <= set(model.sizes)
    passes = [resized_softmax(s, f) for s in (0.5, 1.0) for f in (False, True)]
    assert torch.equal(result.matrix.mat, predictions_by_hand(evaluator, model, passes))
    # ... and ignoring the flip would have given other predictions for this model.
    assert not torch.equal(result.matrix.mat, predictions_by_hand(evaluator, model, passes[::2]))
    with pytest.raises(ValueError, match="eval.scales"):
        build_evaluator(tiny_cfg("eval.scales=[0.0]"), CPU)


def test_crf_refines_at_every_step_count_from_one_pass(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("crf=dense", "crf.steps=[1,2]", "crf.workers=1")
    model = ColourNet(cfg.data.num_classes)
    evaluator = build_evaluator(cfg, CPU)
    result = evaluator.run(model, with_crf=True)
    evaluator.close()
    assert len(model.sizes) == 2  # one forward per batch, whatever the number of step counts
    assert set(result.crf) == {1, 2} and result.crf_seconds_per_image > 0
    for steps, (metrics, matrix) in result.crf.items():
        assert matrix.mat.sum() == result.matrix.mat.sum()
        assert 0 <= metrics["miou"] <= 1
    assert not torch.equal(result.crf[1][1].mat, result.matrix.mat)  # the CRF changed predictions
    # Off unless asked: the same evaluator without with_crf, or crf=none, starts no CRF process.
    monkeypatch.setattr(evaluator_module, "CRFPool", None)
    assert build_evaluator(cfg, CPU).run(model).crf == {}
    assert build_evaluator(tiny_cfg("crf=none"), CPU).run(model, with_crf=True).crf == {}


def test_a_rank_without_images_evaluates_with_crf_to_empty_counts(tiny_cfg):
    """More ranks than validation images: the last rank's share is empty, and with the CRF on it still
    answers (its empty counts go into the ranks' sum) rather than fail before the others' all_reduce."""
    cfg = tiny_cfg("crf=dense", "crf.steps=[1,2]", "crf.workers=1")
    images = len(build_evaluator(cfg, CPU).dataset)
    idle = DistInfo(rank=images, world_size=images + 1, local_rank=0, device=torch.device("cpu"))
    evaluator = build_evaluator(cfg, idle)
    model = ColourNet(cfg.data.num_classes)
    try:
        result = evaluator.run(model, with_crf=True)
        assert list(evaluator.predict(model, with_crf=True)) == []
    finally:
        evaluator.close()
    assert model.sizes == [] and result.matrix.mat.sum() == 0
    assert set(result.crf) == {1, 2} and all(matrix.mat.sum() == 0 for _, matrix in result.crf.values())


def test_a_failing_crf_names_the_image_and_the_evaluator_can_go_on(tiny_cfg, monkeypatch):
    evaluator = build_evaluator(tiny_cfg("crf=dense", "crf.steps=1", "crf.workers=1"), CPU)
    model = ColourNet(evaluator.num_classes)
    good = evaluator.probabilities
    monkeypatch.setattr(evaluator, "probabilities", lambda scores: good(scores) * float("nan"))
    with pytest.raises(RuntimeError, match=r"image 0 \(#0\)"):
        evaluator.run(model, with_crf=True)
    monkeypatch.setattr(evaluator, "probabilities", good)
    assert set(evaluator.run(model, with_crf=True).crf) == {1}  # the same workers serve the next run
    evaluator.close()


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
