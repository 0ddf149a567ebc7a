"""SSIMLoss (SSL paper Eqs. 7 and 9) against a direct, loop-based reading of the spec."""
from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import segrepro.losses._chunks as chunks
from segrepro.losses import SSIMLoss

from .window_reference import (
    IGNORE, assert_absent_shortcut_is_exact, sample, sample_with_absent_classes, valid_entries, value_and_grad,
    window_weights,
)

C1, C2 = 0.01**2, 0.03**2
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "loss" / "ssim.yaml"


def reference(logits, target, size=3, sigma=1.5, form="eq7", lam=0.5):
    """The objective, with loops over valid pixels and window positions; differentiable w.r.t. logits."""
    n_, c_, h, w = logits.shape
    weights = window_weights(size, sigma)
    p = torch.sigmoid(logits)
    valid = target != IGNORE
    one_minus_s, bce = [], []
    for n, c, i, j, y in valid_entries(target, c_):
        items = [(wt, p[n, c, i + a, j + b], y[i + a, j + b]) for (a, b), wt in weights.items()
                 if 0 <= i + a < h and 0 <= j + b < w and valid[n, i + a, j + b]]
        total = sum(wt for wt, _, _ in items)
        mu_p = sum(wt * pv for wt, pv, _ in items) / total
        mu_y = sum(wt * yv for wt, _, yv in items) / total
        var_p = sum(wt * pv * pv for wt, pv, _ in items) / total - mu_p * mu_p
        var_y = sum(wt * yv * yv for wt, _, yv in items) / total - mu_y * mu_y
        cov = sum(wt * pv * yv for wt, pv, yv in items) / total - mu_p * mu_y
        s = (2 * cov + C2) / (var_p + var_y + C2)
        if form == "eq7":
            s = s * (2 * mu_p * mu_y + C1) / (mu_p * mu_p + mu_y * mu_y + C1)
        one_minus_s.append(1 - s)
        bce.append(F.binary_cross_entropy_with_logits(logits[n, c, i, j], y[i, j]))
    return lam * torch.stack(bce).mean() + (1 - lam) * torch.stack(one_minus_s).mean()


@pytest.mark.slow
@pytest.mark.parametrize("form", ["eq7", "eq9"])
@pytest.mark.parametrize("size,sigma,lam", [(3, 1.5, 0.5), (3, None, 0.2), (5, 1.0, 1.0), (1, 1.5, 0.0)])
def test_value_and_gradient_match_loop_reference(form, size, sigma, lam):
    logits, target = sample()
    x = logits.clone().requires_grad_()
    value = SSIMLoss(window_size=size, sigma=sigma, form=form, lam=lam)(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = logits.clone().requires_grad_()
    expected = reference(x_ref, target, size, sigma, form, lam)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["eq7", "eq9"])
def test_gradcheck_across_class_chunks(form, monkeypatch):
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)  # three classes in two chunks
    logits, target = sample(size=5, seed=1)
    loss = SSIMLoss(form=form, lam=0.3)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits.requires_grad_(),), fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["eq7", "eq9"])
def test_classes_absent_from_the_batch_match_loop_reference(form, monkeypatch):
    """Absent classes skip the statistics of their (zero) one-hot map: same value and gradient."""
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)
    logits, target = sample_with_absent_classes(seed=2)
    x = logits.clone().requires_grad_()
    value = SSIMLoss(form=form, lam=0.3)(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = logits.clone().requires_grad_()
    expected = reference(x_ref, target, form=form, lam=0.3)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["eq7", "eq9"])
def test_absent_class_closed_form_is_the_general_path(form, monkeypatch):
    """The closed form for classes absent from an image gives what the general path computes from their
    zero maps, to float64 rounding (it rounds differently, so not bit for bit)."""
    logits, target = sample_with_absent_classes(seed=5)
    loss = SSIMLoss(form=form)

    def run():
        return value_and_grad(loss, logits.double(), target)
    assert_absent_shortcut_is_exact(monkeypatch, run, bitwise=False)


def test_terms_are_the_two_means():
    logits, target = sample(seed=2)
    loss = SSIMLoss(form="eq9", lam=0.25)
    terms = loss.terms(logits, target)
    torch.testing.assert_close(0.25 * terms["bce"] + 0.75 * terms["ssim"], loss(logits, target))
    torch.testing.assert_close(terms["ssim"], reference(logits, target, form="eq9", lam=0.0))
    torch.testing.assert_close(terms["bce"], reference(logits, target, form="eq9", lam=1.0))


def test_eq9_of_a_perfect_prediction_is_lower():
    _, target = sample()
    good = torch.where(F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).bool(), 6.0, -6.0).double()
    bad = -good
    for form in ("eq7", "eq9"):
        loss = SSIMLoss(form=form, lam=0.0)
        assert loss(good, target) < 0.1 < loss(bad, target)


@pytest.mark.parametrize("kwargs", [{"form": "eq8"}, {"form": "EQ7"}, {"window_size": 2}, {"window_size": 0},
                                    {"sigma": 0}, {"lam": -0.1}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SSIMLoss(**kwargs)


def test_no_grad_forward_returns_the_same_value():
    logits, target = sample()
    loss = SSIMLoss()
    with torch.no_grad():
        plain = loss(logits, target)
    torch.testing.assert_close(plain, loss(logits.requires_grad_(), target).detach())


def test_config_instantiates_with_ignore_index():
    cfg = OmegaConf.create({"data": {"ignore_index": 255, "num_classes": 3}, "loss": OmegaConf.load(CONFIG)})
    loss = hydra.utils.instantiate(cfg.loss)
    assert isinstance(loss, SSIMLoss) and loss.ignore_index == 255
    assert (loss.window_size, loss.sigma, loss.form, loss.lam) == (3, 1.5, "eq7", 0.5)


def test_inputs_are_not_modified():
    logits, target = sample()
    logits = logits.contiguous(memory_format=torch.channels_last)  # a chunk copy could alias it
    before = logits.clone()
    SSIMLoss()(logits.requires_grad_(), target).backward()
    assert torch.equal(logits.detach(), before)
