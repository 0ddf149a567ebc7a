"""SSLLoss against a direct, loop-based reading of the spec (SSL paper Sec. 3, Eqs. 10-17)."""
from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import segrepro.losses._chunks as chunks
import segrepro.losses.ssl as ssl_module
from segrepro.losses._stats import LocalStats
from segrepro.losses import SSLLoss

from .window_reference import (
    IGNORE, assert_absent_shortcut_is_exact, sample, sample_with_absent_classes, valid_entries, value_and_grad,
    window_weights,
)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "loss" / "ssl.yaml"


def local_stats(v, valid, i, j, weights, border="renorm"):
    """Weighted mean and (clamped) variance of v over the in-image, valid pixels of the window at (i, j); with
    ``border="zero"`` the positions outside the image count too, as zeros of their weight."""
    h, w = v.shape
    items = [(wt, float(v[i + a, j + b])) for (a, b), wt in weights.items()
             if 0 <= i + a < h and 0 <= j + b < w and valid[i + a, j + b]]
    if border == "zero":
        items += [(wt, 0.0) for (a, b), wt in weights.items() if not (0 <= i + a < h and 0 <= j + b < w)]
    total = sum(wt for wt, _ in items)
    mu = sum(wt * x for wt, x in items) / total
    var = max(sum(wt * x * x for wt, x in items) / total - mu * mu, 0.0)
    return mu, var


def inside(h, w, size):
    """The pixels whose size x size window lies entirely inside the image."""
    r = size // 2
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[r: h - r, r: w - r] = True
    return mask


def reference_e(logits, target, size=3, sigma=1.5, c4=0.01, border="renorm"):
    """e [N, C, H, W] of Eq. 10 (0 at ignored pixels, and with border="valid" where the window crosses the image
    border), by loops over pixels and window positions."""
    n_, c_, h, w = logits.shape
    weights = window_weights(size, sigma)
    p = torch.sigmoid(logits)
    valid = target != IGNORE
    e = torch.zeros(n_, c_, h, w, dtype=torch.float64)
    for n, c, i, j, y in valid_entries(target, c_):
        if border == "valid" and not inside(h, w, size)[i, j]:
            continue
        mu_y, var_y = local_stats(y, valid[n], i, j, weights, border)
        mu_p, var_p = local_stats(p[n, c], valid[n], i, j, weights, border)
        y_nor = (float(y[i, j]) - mu_y + c4) / (math.sqrt(var_y) + c4)
        p_nor = (float(p[n, c, i, j]) - mu_p + c4) / (math.sqrt(var_p) + c4)
        e[n, c, i, j] = abs(y_nor - p_nor)
    return e


def reference_loss(logits, target, size=3, sigma=1.5, beta=0.1, lam=0.5, c4=0.01, ohem=True, reweight=True,
                   border="renorm", reduction="pixel"):
    """Objective of Eq. 17 with e and f constants; differentiable w.r.t. logits through the BCE only. With
    border="valid" only the entries whose window lies inside the image may be hard; reduction="pixel": the
    BCE summed over the classes, averaged over the valid pixels."""
    e = reference_e(logits.detach(), target, size, sigma, c4, border)
    w_c = window_weights(size, sigma)[(0, 0)]
    e_max = 2 * (1 - w_c) / (math.sqrt(w_c * (1 - w_c)) + c4)
    valid = (target != IGNORE).unsqueeze(1).expand_as(logits)
    candidates = valid & inside(*target.shape[1:], size) if border == "valid" else valid
    y = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).double()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    f = (e > beta * e_max) & candidates if ohem else candidates
    weight = e if reweight else torch.ones_like(e)
    bce_mean = bce[valid].sum() / (valid.sum() if reduction == "entry" else (target != IGNORE).sum())
    ssl = (weight * f * bce).sum() / max(int(f.sum()), 1)
    parts = {"bce": bce_mean, "ssl": ssl, "hard_fraction": f.sum().double() / valid.sum(), "e": e[valid]}
    return lam * bce_mean + (1 - lam) * ssl, parts


@pytest.mark.parametrize("size,sigma", [(3, 1.5), (3, None), (5, 1.0)])
def test_error_map_matches_loop_reference(size, sigma):
    logits, target = sample()
    e = SSLLoss(region_size=size, sigma=sigma).error_map(logits, target)
    torch.testing.assert_close(e, reference_e(logits, target, size, sigma), rtol=1e-12, atol=1e-12)
    assert not e.requires_grad


@pytest.mark.parametrize("ohem,reweight", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("chunk", [8, 2])
def test_value_and_gradient_match_reference(ohem, reweight, chunk, monkeypatch):
    monkeypatch.setattr(chunks, "CLASS_CHUNK", chunk)  # 2: three classes in two chunks
    logits, target = sample(seed=1)
    kwargs = dict(beta=0.3, lam=0.3, ohem=ohem, reweight=reweight)
    x = logits.clone().requires_grad_()
    value = SSLLoss(**kwargs)(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = logits.clone().requires_grad_()
    expected, _ = reference_loss(x_ref, target, **kwargs)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kwargs", [
    {"border": "zero"}, {"border": "valid"}, {"border": "zero", "size": 5, "sigma": None},
    {"border": "valid", "size": 5, "sigma": 1.0}, {"border": "valid", "ohem": False},
    {"border": "valid", "ohem": False, "reweight": False}, {"border": "valid", "reweight": False},
    {"reduction": "pixel"}, {"reduction": "pixel", "border": "zero", "ohem": False},
], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_border_and_reduction_match_reference(kwargs, impl, monkeypatch):
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)  # three classes in two chunks
    logits, target = sample(seed=1)
    options = {"beta": 0.3, "lam": 0.3, **kwargs}
    size, sigma = options.pop("size", 3), options.pop("sigma", 1.5)
    loss = SSLLoss(region_size=size, sigma=sigma, impl=impl, **options)
    x = logits.clone().requires_grad_()
    value = loss(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = logits.clone().requires_grad_()
    expected, parts = reference_loss(x_ref, target, size, sigma, **options)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    border = options.get("border", "renorm")
    torch.testing.assert_close(loss.error_map(logits, target), reference_e(logits, target, size, sigma, border=border),
                               rtol=1e-12, atol=1e-12)
    terms = loss.terms(logits, target)
    for key in ("bce", "ssl", "hard_fraction"):
        torch.testing.assert_close(terms[key], parts[key].to(terms[key].dtype), rtol=1e-12, atol=1e-12)
    scored = (target != IGNORE) & (inside(*target.shape[1:], size) if border == "valid" else True)
    e = reference_e(logits, target, size, sigma, border=border).permute(1, 0, 2, 3)[:, scored]
    torch.testing.assert_close(terms["e_max"], e.max())  # over the entries that have an e
    torch.testing.assert_close(terms["e_mean"], e.mean(), rtol=1e-12, atol=1e-12)


# A 3x3 image, two classes, p = 0.5 everywhere (logits 0), a uniform 3x3 window: statistics by hand.
HAND_TARGET = torch.tensor([[[0, 0, 0], [0, 1, 1], [0, 1, 1]]])
HAND_LOGITS = torch.zeros(1, 2, 3, 3, dtype=torch.float64)


def hand_nor(v, mu, var, c4=0.01):
    return (v - mu + c4) / (math.sqrt(var) + c4)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_borders_by_hand_on_a_3x3_image(impl):
    loss = {b: SSLLoss(region_size=3, sigma=None, border=b) for b in ("renorm", "zero", "valid")}
    e = {b: loss[b].error_map(HAND_LOGITS, HAND_TARGET)[0] for b in loss}
    # Corner (0, 0), class 1 (y = 0 there): renorm over the 4 in-image pixels (y = 0, 0, 0, 1; p constant, so
    # p_nor = 1); zero padding adds 5 zeros of weight 1/9 (mu_p = 2/9, var_p = 1/9 - 4/81).
    assert e["renorm"][1, 0, 0].item() == pytest.approx(abs(hand_nor(0, 1 / 4, 3 / 16) - 1), rel=1e-12)
    zero = hand_nor(0, 1 / 9, 1 / 9 - 1 / 81) - hand_nor(0.5, 2 / 9, 1 / 9 - 4 / 81)
    assert e["zero"][1, 0, 0].item() == pytest.approx(abs(zero), rel=1e-12)
    # valid: only the center's window lies inside (4 and 5 ones of 9: var_y = 20/81 for both classes).
    assert torch.count_nonzero(e["valid"][:, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]]) == 0
    e_center = [abs(hand_nor(0, 5 / 9, 20 / 81) - 1), abs(hand_nor(1, 4 / 9, 20 / 81) - 1)]
    assert e["valid"][:, 1, 1].tolist() == pytest.approx(e_center, rel=1e-12)
    # The loss (lam 0, no OHEM): sum(e bce) / M over the 2 center entries, each bce = log 2.
    value = SSLLoss(region_size=3, sigma=None, lam=0.0, ohem=False, border="valid", impl=impl)(HAND_LOGITS, HAND_TARGET)
    assert value.item() == pytest.approx(math.log(2) * sum(e_center) / 2, rel=1e-12)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_pixel_reduction_is_c_times_the_entry_bce(impl):
    """SSL with reduction="pixel" is lam C BCE_entry + (1 - lam) L_ssl: values and gradients; L_ssl keeps its
    1 / M."""
    from segrepro.losses import BCELoss
    logits, target = sample(seed=5)
    c = logits.shape[1]
    value, grad = value_and_grad(SSLLoss(lam=0.3, reduction="pixel", impl=impl), logits, target)
    bce, bce_grad = value_and_grad(BCELoss(reduction="entry"), logits, target)
    l_ssl, ssl_grad = value_and_grad(SSLLoss(lam=0.0, impl=impl), logits, target)
    torch.testing.assert_close(value, 0.3 * c * bce + 0.7 * l_ssl, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, 0.3 * c * bce_grad + 0.7 * ssl_grad, rtol=1e-10, atol=1e-15)
    terms = SSLLoss(lam=0.3, reduction="pixel").terms(logits, target)
    torch.testing.assert_close(terms["bce"], c * bce, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["ssl"], l_ssl, rtol=1e-12, atol=0)


def test_valid_border_on_an_image_smaller_than_the_window():
    """No window inside: no e, no hard entry, the loss is lam * BCE and the terms are finite."""
    logits, target = sample(seed=6)
    loss = SSLLoss(region_size=7, border="valid", lam=0.4)
    assert loss.error_map(logits[:, :, :5], target[:, :5]).abs().max() == 0
    terms = loss.terms(logits[:, :, :5], target[:, :5])
    assert terms["hard_fraction"] == 0 and terms["ssl"] == 0 and terms["e_max"] == 0
    torch.testing.assert_close(loss(logits[:, :, :5], target[:, :5]), 0.4 * terms["bce"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("c4", [0.01, 0.5])
def test_classes_absent_from_the_batch_match_reference(c4, monkeypatch):
    """Absent classes skip their one-hot statistics (y_nor is a known constant): same e, value and gradient."""
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)  # present and absent classes in several chunks
    logits, target = sample_with_absent_classes(seed=3)
    loss = SSLLoss(beta=0.3, lam=0.3, c4=c4)
    torch.testing.assert_close(loss.error_map(logits, target), reference_e(logits, target, c4=c4),
                               rtol=1e-12, atol=1e-12)
    x = logits.clone().requires_grad_()
    (grad,) = torch.autograd.grad(value := loss(x, target), x)
    x_ref = logits.clone().requires_grad_()
    expected, _ = reference_loss(x_ref, target, beta=0.3, lam=0.3, c4=c4)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c4", [0.01, 0.0])
def test_absent_class_shortcut_is_bitwise_the_general_path(c4, monkeypatch):
    logits, target = sample_with_absent_classes(seed=4)
    logits, loss = logits.float(), SSLLoss(c4=c4)
    assert_absent_shortcut_is_exact(
        monkeypatch, lambda: (loss.error_map(logits, target), *value_and_grad(loss, logits, target)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c4", [0.01, 1e-30, 0.0])
def test_normalized_zero_is_what_a_map_of_zeros_normalizes_to(c4, dtype):
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    valid[0, 2, 3] = False
    stats = LocalStats(3, 1.5, valid, dtype)
    num, den = ssl_module.normalized_parts(torch.zeros(1, 2, 6, 6, dtype=dtype), stats, c4, binary=True)
    assert torch.equal(num / den, torch.full_like(num, ssl_module.normalized_zero(c4)))


def test_present_first_orders_labels_and_chunks(monkeypatch):
    monkeypatch.setattr(chunks, "CLASS_CHUNK", 2)
    target = torch.tensor([[[4, 1, IGNORE], [5, 1, 4]]])
    order = chunks.PresentFirst(target, target != IGNORE, 6)
    assert [(c.classes, c.present) for c in order.chunks] == [([1, 4], True), ([5], True), ([0, 2], False),
                                                             ([3], False)]
    assert order.labels[target != IGNORE].tolist() == [1, 0, 2, 0, 1]
    for chunk in order.chunks:  # each chunk's positions hold its classes
        for position, cls in zip(range(chunk.positions.start, chunk.positions.stop), chunk.classes):
            assert torch.equal(order.labels == position, target == cls)


def test_hard_mask_selects_some_entries_and_terms_match():
    logits, target = sample(seed=2)
    loss = SSLLoss()
    expected, parts = reference_loss(logits, target)
    terms = loss.terms(logits, target)
    assert 0 < terms["hard_fraction"] < 1
    for key in ("bce", "ssl", "hard_fraction"):
        torch.testing.assert_close(terms[key], parts[key].to(terms[key].dtype), rtol=1e-12, atol=1e-12)
    e = parts["e"]
    torch.testing.assert_close(terms["e_max"], e.max())
    torch.testing.assert_close(terms["e_mean"], e.mean())
    torch.testing.assert_close(terms["e_median"], e.median())
    assert terms["norm_gt_min"] < 0 < terms["norm_gt_max"] and terms["norm_pred_min"] < terms["norm_pred_max"]
    torch.testing.assert_close(0.5 * terms["bce"] + 0.5 * terms["ssl"], loss(logits, target))
    torch.testing.assert_close(loss(logits, target), expected)


def test_normalized_extremes_in_terms():
    logits, target = sample(seed=3)
    terms = SSLLoss(region_size=3, sigma=None).terms(logits, target)
    weights = window_weights(3, None)
    p, valid = torch.sigmoid(logits), target != IGNORE
    p_nor, y_nor = [], []
    for n in range(2):
        for c in range(3):
            y = (target[n] == c).double()
            for i in range(7):
                for j in range(7):
                    if valid[n, i, j]:
                        mu, var = local_stats(y, valid[n], i, j, weights)
                        y_nor.append((float(y[i, j]) - mu + 0.01) / (math.sqrt(var) + 0.01))
                        mu, var = local_stats(p[n, c], valid[n], i, j, weights)
                        p_nor.append((float(p[n, c, i, j]) - mu + 0.01) / (math.sqrt(var) + 0.01))
    for key, value in [("norm_pred_min", min(p_nor)), ("norm_pred_max", max(p_nor)),
                       ("norm_gt_min", min(y_nor)), ("norm_gt_max", max(y_nor))]:
        assert terms[key].item() == pytest.approx(value, rel=1e-12)


def test_e_max_is_the_theoretical_range_of_the_normalized_ground_truth():
    for size, sigma in [(3, 1.5), (5, None)]:
        w_c = window_weights(size, sigma)[(0, 0)]
        loss = SSLLoss(region_size=size, sigma=sigma)
        y_max = (1 - w_c + 0.01) / (math.sqrt(w_c * (1 - w_c)) + 0.01)  # center 1, all others 0
        y_min = (0 - (1 - w_c) + 0.01) / (math.sqrt(w_c * (1 - w_c)) + 0.01)  # center 0, all others 1
        assert loss.e_max == pytest.approx(y_max - y_min, rel=1e-12)


# SSL Figure 2: one binary channel (class 1 of two), uniform statistics over the whole 3x3 patch.
FIG2_Y = torch.tensor([[[0, 0, 0], [1, 0, 1], [1, 1, 1]]])
FIG2_P = torch.tensor([[.1, .1, .1], [.8, .8, .9], [.8, .9, .8]], dtype=torch.float64)


def figure2(region_size, c4):
    x = torch.logit(FIG2_P)[None, None]
    e = SSLLoss(region_size=region_size, sigma=None, c4=c4).error_map(torch.cat([-x, x], 1), FIG2_Y)[0, 1]
    bce = F.binary_cross_entropy(FIG2_P, FIG2_Y[0].double(), reduction="none")
    return bce, e * bce


def test_figure2_worked_example():
    # A 5x5 window renormalized over the in-image pixels covers the whole 3x3 patch from every pixel: these
    # are the figure's "statistics over the whole patch". Its numbers are reproduced with C4 = 0.
    bce, weighted = figure2(region_size=5, c4=0.0)
    assert bce.sum().item() == pytest.approx(2.805, abs=1e-3)
    assert (bce[1, 1] / bce.sum()).item() == pytest.approx(0.57, abs=0.01)
    assert weighted.sum().item() == pytest.approx(3.060, abs=1e-3)
    assert (weighted[1, 1] / weighted.sum()).item() == pytest.approx(0.91, abs=0.01)
    # With the default C4 = 0.01 the total is 2.996 (center 91%).
    _, weighted = figure2(region_size=5, c4=0.01)
    assert weighted.sum().item() == pytest.approx(2.996, abs=1e-3)
    assert (weighted[1, 1] / weighted.sum()).item() == pytest.approx(0.91, abs=0.01)
    # A 3x3 window sees the whole patch from the center pixel only: same center, different border.
    _, whole = figure2(region_size=5, c4=0.0)
    _, local = figure2(region_size=3, c4=0.0)
    assert local[1, 1].item() == pytest.approx(whole[1, 1].item(), rel=1e-12)
    assert local.sum().item() != pytest.approx(whole.sum().item(), abs=1e-2)


def test_region_size_one_is_lam_times_bce():
    logits, target = sample()
    loss = SSLLoss(region_size=1, lam=0.4)
    value = loss(logits, target)
    valid = (target != IGNORE).unsqueeze(1).expand_as(logits)
    y = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).double()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")[valid].sum() / (target != IGNORE).sum()
    assert torch.isfinite(value) and value.item() == pytest.approx(0.4 * bce.item(), rel=1e-12)  # pixel: the default
    assert loss.error_map(logits, target).abs().max() == 0
    assert loss.terms(logits, target)["hard_fraction"] == 0


@pytest.mark.parametrize("kwargs", [{"region_size": 4}, {"region_size": 0}, {"region_size": -3},
                                    {"region_size": 3.0}, {"sigma": 0.0}, {"sigma": -1.0}, {"beta": 1.0},
                                    {"beta": -0.1}, {"lam": 1.5}, {"c4": -0.01}, {"border": "same"},
                                    {"reduction": "sum"}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SSLLoss(**kwargs)


@pytest.mark.parametrize("border", ["renorm", "zero", "valid"])
@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("size,sigma", [(3, 1.5), (7, None), (11, 2.0)])
def test_float32_error_map_matches_float64_on_flat_regions(size, sigma, images, border):
    """Where a window holds one label, y's local variance is exactly 0 in float32 too: a mean taken as
    ``sum * (1 / weight sum)`` lands an ulp below 1 and turns y_nor from 1 into about 0.98, and so does a
    weight sum convolved in another order than y's window sums (one image, 11 x 11)."""
    g = torch.Generator().manual_seed(1)
    target = torch.zeros(images, 24, 24, dtype=torch.long)
    target[:, 8:, :12] = 1
    target[:, 14:, 10:] = 2
    target[0, :3, 5:9] = IGNORE
    logits = torch.randn(images, 3, 24, 24, generator=g, dtype=torch.float64)
    loss = SSLLoss(region_size=size, sigma=sigma, border=border)
    torch.testing.assert_close(loss.error_map(logits.float(), target), loss.error_map(logits, target).float(),
                               rtol=0, atol=1e-4)


def test_config_instantiates_with_ignore_index():
    cfg = OmegaConf.create({"data": {"ignore_index": 255, "num_classes": 3}, "loss": OmegaConf.load(CONFIG)})
    loss = hydra.utils.instantiate(cfg.loss)
    assert isinstance(loss, SSLLoss) and loss.ignore_index == 255
    assert (loss.region_size, loss.sigma, loss.beta, loss.lam, loss.c4) == (3, 1.5, 0.1, 0.5, 0.01)


def test_inputs_are_not_modified():
    logits, target = sample()
    logits = logits.contiguous(memory_format=torch.channels_last)  # a chunk copy could alias it
    before = logits.clone()
    SSLLoss()(logits.requires_grad_(), target).backward()
    SSLLoss().terms(logits, target)
    assert torch.equal(logits.detach(), before)
