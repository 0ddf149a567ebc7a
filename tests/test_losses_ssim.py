"""SSIMLoss (SSL paper Eqs. 7 and 9) against a direct, loop-based reading of the spec."""
from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import segrepro.losses._chunks as chunks
from segrepro.losses import SSIMLoss
from segrepro.losses import reference as ref

from .window_reference import (
    IGNORE, assert_absent_shortcut_is_exact, sample, sample_with_absent_classes, valid_entries, value_and_grad,
    window_weights,
)

C1, C2 = 0.01**2, 0.03**2
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "loss" / "ssim.yaml"


def reference(logits, target, size=3, sigma=1.5, form="eq7", lam=0.5, border="renorm", reduction="pixel"):
    """The objective, with loops over valid pixels and window positions; differentiable w.r.t. logits.
    ``border``: the window positions outside the image are left out ("renorm"), or zeros that keep their
    weight ("zero"); "valid" averages 1 - S over the entries whose window lies inside the image only.
    Ignored positions are left out in all three. ``reduction="pixel"``: the BCE summed over the classes and
    averaged over the valid pixels."""
    n_, c_, h, w = logits.shape
    r = size // 2
    weights = window_weights(size, sigma)
    p = torch.sigmoid(logits)
    valid = target != IGNORE
    one_minus_s, bce = [], []
    for n, c, i, j, y in valid_entries(target, c_):
        items = [(wt, p[n, c, i + a, j + b], y[i + a, j + b]) for (a, b), wt in weights.items()
                 if 0 <= i + a < h and 0 <= j + b < w and valid[n, i + a, j + b]]
        if border == "zero":
            items += [(wt, 0.0, 0.0) for (a, b), wt in weights.items() if not (0 <= i + a < h and 0 <= j + b < w)]
        total = sum(wt for wt, _, _ in items)
        mu_p = sum(wt * pv for wt, pv, _ in items) / total
        mu_y = sum(wt * yv for wt, _, yv in items) / total
        var_p = sum(wt * pv * pv for wt, pv, _ in items) / total - mu_p * mu_p
        var_y = sum(wt * yv * yv for wt, _, yv in items) / total - mu_y * mu_y
        cov = sum(wt * pv * yv for wt, pv, yv in items) / total - mu_p * mu_y
        s = (2 * cov + C2) / (var_p + var_y + C2)
        if form == "eq7":
            s = s * (2 * mu_p * mu_y + C1) / (mu_p * mu_p + mu_y * mu_y + C1)
        if border != "valid" or (r <= i < h - r and r <= j < w - r):
            one_minus_s.append(1 - s)
        bce.append(F.binary_cross_entropy_with_logits(logits[n, c, i, j], y[i, j]))
    l_ce = torch.stack(bce).sum() / (len(bce) if reduction == "entry" else int(valid.sum()))
    l_ssim = torch.stack(one_minus_s).mean() if one_minus_s else logits.sum() * 0
    return lam * l_ce + (1 - lam) * l_ssim


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


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kwargs", [
    {"border": "zero"}, {"border": "valid"}, {"border": "zero", "form": "eq9", "size": 5, "sigma": 1.0},
    {"border": "valid", "form": "eq9", "size": 5, "sigma": None}, {"reduction": "entry", "lam": 0.3},
], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_border_and_reduction_match_loop_reference(kwargs, impl, monkeypatch):
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)  # three classes in two chunks
    logits, target = sample(seed=3)
    options = {"size": 3, "sigma": 1.5, "form": "eq7", "lam": 0.5, **kwargs}
    loss = SSIMLoss(window_size=options.pop("size"), impl=impl, **options)
    x = logits.clone().requires_grad_()
    value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = logits.clone().requires_grad_()
    expected = reference(x_ref, target, loss.window_size, **options)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)
    default = SSIMLoss(window_size=loss.window_size, sigma=loss.sigma, form=loss.form, lam=loss.lam)
    assert abs(float(value.detach() - default(logits, target))) > 1e-4  # the option changes the value


@pytest.mark.parametrize("form", ["eq7", "eq9"])
@pytest.mark.parametrize("border", ["zero", "valid"])
def test_border_with_classes_absent_from_the_batch(border, form, monkeypatch):
    """The closed form of the absent classes under the other borders: same value and gradient as the loops."""
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)
    logits, target = sample_with_absent_classes(seed=6)
    value, grad = value_and_grad(SSIMLoss(form=form, lam=0.3, border=border), logits, target)
    expected, grad_ref = value_and_grad(lambda x, t: reference(x, t, form=form, lam=0.3, border=border), logits,
                                        target)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)


# A 3x3 image, two classes, p = 0.5 everywhere (logits 0), a uniform 3x3 window: statistics by hand.
HAND_TARGET = torch.tensor([[[0, 0, 0], [0, 1, 1], [0, 1, 1]]])


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_valid_border_keeps_the_one_window_inside_a_3x3_image(impl):
    # Only the center's window lies inside: both classes have var_y = 4/9 - 16/81 = 20/81 (4 and 5 ones of 9),
    # var_p = cov = 0, so S2 = C2 / (20/81 + C2); the BCE is log 2 for every entry, 2 log 2 for every pixel.
    logits = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    for lam in (0.0, 0.25):
        loss = SSIMLoss(window_size=3, sigma=None, form="eq9", lam=lam, border="valid", impl=impl)
        expected = lam * 2 * math.log(2) + (1 - lam) * (1 - C2 / (20 / 81 + C2))
        assert loss(logits, HAND_TARGET).item() == pytest.approx(expected, rel=1e-12)
    # A 2-pixel-high image has no window inside: L_ssim is 0.
    loss = SSIMLoss(window_size=3, lam=0.0, border="valid", impl=impl)
    assert loss(logits[:, :, :2], HAND_TARGET[:, :2]).item() == 0


def test_zero_border_pads_with_zeros_of_full_weight():
    # Corner (0, 0), class 1: the window holds 4 pixels (y = 0, 0, 0, 1; p = 0.5) and 5 zeros outside, each of
    # weight 1/9: mu_p = 2/9, var_p = 1/9 - 4/81 = 5/81, mu_y = 1/9, var_y = 8/81, cov = 0.5/9 - 2/81 = 2.5/81.
    # renorm: the 4 pixels only, var_y = 1/4 - 1/16 = 3/16, var_p = cov = 0.
    p = torch.full((1, 2, 3, 3), 0.5, dtype=torch.float64)
    y = torch.stack([HAND_TARGET == 0, HAND_TARGET == 1], 1).double()
    mask, window = torch.ones(1, 1, 3, 3, dtype=torch.float64), ref.gaussian_window(3, None)
    zero = ref.ssim_map(p, y, mask, window, "eq9", border="zero")[0, 1, 0, 0]
    assert zero.item() == pytest.approx((5 / 81 + C2) / (13 / 81 + C2), rel=1e-12)
    s1 = (2 * (2 / 9) * (1 / 9) + C1) / ((2 / 9) ** 2 + (1 / 9) ** 2 + C1)
    zero7 = ref.ssim_map(p, y, mask, window, "eq7", border="zero")[0, 1, 0, 0]
    assert zero7.item() == pytest.approx(s1 * (5 / 81 + C2) / (13 / 81 + C2), rel=1e-12)
    renorm = ref.ssim_map(p, y, mask, window, "eq9")[0, 1, 0, 0]
    assert renorm.item() == pytest.approx(C2 / (3 / 16 + C2), rel=1e-12)
    # An ignored pixel is left out under zero padding too: ignoring (1, 1) leaves y = 0, 0, 0 and p = 0.5 x 3
    # with weight 3/9 plus 5/9 of zeros outside, renormalized over those 8/9.
    mask[0, 0, 1, 1] = 0
    ignored = ref.ssim_map(p * mask, y * mask, mask, window, "eq9", border="zero")[0, 1, 0, 0]
    mu_p, e_p2 = 1.5 / 8, 0.75 / 8
    assert ignored.item() == pytest.approx(C2 / (e_p2 - mu_p**2 + C2), rel=1e-12)


def test_pixel_reduction_is_c_times_the_entry_bce():
    logits, target = sample(seed=4)
    c = logits.shape[1]
    for impl in ("fast", "reference"):
        value, grad = value_and_grad(SSIMLoss(lam=0.3, reduction="pixel", impl=impl), logits, target)
        bce_entry, bce_grad = value_and_grad(SSIMLoss(lam=1.0, reduction="entry", impl=impl), logits, target)
        ssim, ssim_grad = value_and_grad(SSIMLoss(lam=0.0, impl=impl), logits, target)
        torch.testing.assert_close(value, 0.3 * c * bce_entry + 0.7 * ssim, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, 0.3 * c * bce_grad + 0.7 * ssim_grad, rtol=1e-10, atol=1e-15)
    terms = SSIMLoss(lam=0.3, reduction="pixel").terms(logits, target)
    entry = SSIMLoss(reduction="entry").terms(logits, target)["bce"]
    torch.testing.assert_close(terms["bce"], c * entry, rtol=1e-12, atol=0)


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
                                    {"sigma": 0}, {"lam": -0.1}, {"border": "reflect"}, {"reduction": "mean"}])
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
