"""The fast windowed losses against their plain autograd references (segrepro/losses/reference.py).

Values and gradients in float64 on VOC-like label maps (blocks of a few of the 21 classes per image, an
ignored band along region borders, ignored pixels on the image border), on both batch strategies; the
references themselves against the loop oracles of the per-loss tests and SSL's Figure 2.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segrepro.losses import AffinityFieldLoss, LADLoss, SSIMLoss, SSLLoss
from segrepro.losses import reference as ref

IGNORE = 255
NUM_CLASSES = 21
SIZE = 65
# Tolerances of the fast-vs-reference comparisons (float64). Observed on this batch: values within 1e-15
# (relative), gradients within 1e-17 absolute (their largest entries are 1e-5 to 1e-3), SSL's e within 3e-12
# (a window of two valid pixels, where E[p^2] - mu^2 cancels).
VALUE_TOL = dict(rtol=1e-13, atol=1e-15)
GRAD_TOL = dict(rtol=1e-10, atol=1e-16)
E_TOL = dict(rtol=1e-9, atol=1e-10)


def voc_like(n=2, c=NUM_CLASSES, size=SIZE, seed=0):
    """float64 logits and VOC-like labels: per image background plus a few rectangles of 2-4 classes (the
    others absent), an ignored band 2-4 pixels wide along the region borders, ignored runs on the image
    border. Logits lean towards the labels (as a half-trained network's do), with noise."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, size, size, dtype=torch.long)
    for b in range(n):
        classes = torch.randperm(c - 1, generator=g)[: 2 + b] + 1
        for cls in classes.tolist():
            for _ in range(2):
                top, left = torch.randint(0, size - size // 5, (2,), generator=g).tolist()
                height, width = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
                target[b, top: top + height, left: left + width] = cls
    # The band: pixels with another label within Chebyshev distance 1, or (at random) 2.
    lab = target.unsqueeze(1).double()

    def differs(k):
        hi = F.max_pool2d(lab, k, 1, k // 2)
        lo = -F.max_pool2d(-lab, k, 1, k // 2)
        return (hi != lo).squeeze(1)

    band = differs(3) | (differs(5) & (torch.rand(n, size, size, generator=g) < 0.5))
    target[band] = IGNORE
    q = size // 4
    target[0, 0, q // 2: 2 * q] = IGNORE  # runs along the top, right and bottom edges, two corners
    target[0, q: 2 * q, -1] = IGNORE
    target[-1, -2:, : q] = IGNORE
    target[-1, 0, 0] = target[-1, -1, -1] = IGNORE
    y = F.one_hot(target.clamp(max=c - 1), c).permute(0, 3, 1, 2).double()
    logits = 2.0 * torch.randn(n, c, size, size, generator=g, dtype=torch.float64) + 3.0 * y - 1.5
    return logits, target


@pytest.fixture(scope="module")
def batch():
    logits, target = voc_like()
    present = [set(t[t != IGNORE].unique().tolist()) for t in target]
    assert all(2 <= len(s) < NUM_CLASSES for s in present) and present[0] != present[1]
    assert 0.05 < (target == IGNORE).double().mean() < 0.3
    return logits, target


def value_and_grad(fn, logits, target):
    x = logits.clone().requires_grad_()
    value = fn(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


_REFERENCE_RESULTS = {}  # the reference does not depend on the batch strategy: computed once per case


def assert_matches(fast, reference, logits, target, case):
    value, grad = value_and_grad(fast, logits, target)
    if case not in _REFERENCE_RESULTS:
        _REFERENCE_RESULTS[case] = value_and_grad(reference, logits, target)
    expected, expected_grad = _REFERENCE_RESULTS[case]
    assert torch.isfinite(expected) and torch.isfinite(expected_grad).all()
    assert expected_grad.abs().max() > 0
    torch.testing.assert_close(value, expected, **VALUE_TOL)
    torch.testing.assert_close(grad, expected_grad, **GRAD_TOL)


# ---------------------------------------------------------------------------------------------------------
# Fast path vs reference, float64, N=2, C=21, 65x65
# ---------------------------------------------------------------------------------------------------------

SSL_CASES = [
    {},
    {"region_size": 7, "sigma": 3.0},
    {"ohem": False},
    {"reweight": False},
    {"border": "zero"},
    {"border": "valid", "region_size": 7, "sigma": 3.0},
    {"reduction": "entry"},
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", SSL_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_ssl_matches_reference(kwargs, batch, batch_strategy):
    logits, target = batch
    loss = SSLLoss(**kwargs)
    assert_matches(loss, lambda x, t: ref.ssl_loss(x, t, **kwargs), logits, target, ("ssl", str(kwargs)))
    window = {k: v for k, v in kwargs.items() if k in ("region_size", "sigma", "border")}
    e = ref.ssl_error_map(logits, target, **window)
    torch.testing.assert_close(loss.error_map(logits, target), e, **E_TOL)
    if loss.ohem:  # the hard mask is a real selection
        hard = (e > loss.beta * ref.ssl_e_max(loss.region_size, loss.sigma)).double().mean()
        assert 0.01 < hard < 0.99


SSIM_CASES = [
    {"form": "eq7"},
    {"form": "eq9"},
    {"form": "eq7", "border": "zero"},
    {"form": "eq9", "border": "valid", "window_size": 7, "sigma": 3.0},
    {"form": "eq7", "reduction": "entry"},
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", SSIM_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_ssim_matches_reference(kwargs, batch, batch_strategy):
    logits, target = batch
    assert_matches(SSIMLoss(**kwargs), lambda x, t: ref.ssim_loss(x, t, **kwargs), logits, target,
                   ("ssim", str(kwargs)))


AFFINITY_CASES = [
    {},
    {"kernel_size": 5, "margin": 2.0, "lam_edge": 0.7, "lam_nonedge": 1.3},
    {"decay": False},
    {"official_pairs": False},
    {"official_pairs": False, "kernel_size": 5},
]


@pytest.mark.parametrize("kwargs", AFFINITY_CASES,
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.slow
def test_affinity_matches_reference(kwargs, batch, batch_strategy):
    logits, target = batch
    loss = AffinityFieldLoss(**kwargs)
    loss.set_progress(0.3)
    assert_matches(loss, lambda x, t: ref.affinity_field_loss(x, t, progress=0.3, **kwargs), logits, target,
                   ("affinity", str(kwargs)))


@pytest.mark.slow
@pytest.mark.parametrize("kernel_size,k,stride,pool", [(3, 3.0, 1, "image"), (5, 3.0, 1, "image"), (5, 3.0, 2, "image"),
                                                       (3, 0.5, 1, "image"), (5, 3.0, 2, "batch")])
def test_lad_matches_reference(kernel_size, k, stride, pool, batch, batch_strategy):
    logits, target = batch
    loss = LADLoss(kernel_size=kernel_size, k=k, stride=stride, pool=pool)
    assert_matches(loss, lambda x, t: ref.lad_loss(x, t, kernel_size=kernel_size, k=k, stride=stride, pool=pool),
                   logits, target, ("lad", kernel_size, k, stride, pool))
    local, valid = loss.local_losses(logits, target)
    ref_local, ref_valid = ref.lad_local_losses(logits, target, kernel_size=kernel_size, stride=stride)
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(local, ref_local, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# The references against the float64 loop oracles of the per-loss tests (small samples)
# ---------------------------------------------------------------------------------------------------------

QUICK_LOSSES = {
    "ssl": (lambda: SSLLoss(), ref.ssl_loss),
    "ssim": (lambda: SSIMLoss(form="eq7"), lambda x, t: ref.ssim_loss(x, t, form="eq7")),
    "affinity": (lambda: AffinityFieldLoss(), ref.affinity_field_loss),
    "lad": (lambda: LADLoss(kernel_size=5), ref.lad_loss),
    # the options (the defaults above: renorm border, pixel reduction, official pairs, image pooling)
    "ssl:border=zero": (lambda: SSLLoss(border="zero"), lambda x, t: ref.ssl_loss(x, t, border="zero")),
    "ssl:border=valid,reduction=entry": (lambda: SSLLoss(border="valid", reduction="entry"),
                                         lambda x, t: ref.ssl_loss(x, t, border="valid", reduction="entry")),
    "ssim:border=zero,reduction=entry": (lambda: SSIMLoss(border="zero", reduction="entry"),
                                         lambda x, t: ref.ssim_loss(x, t, border="zero", reduction="entry")),
    "ssim:border=valid": (lambda: SSIMLoss(form="eq9", border="valid"),
                          lambda x, t: ref.ssim_loss(x, t, form="eq9", border="valid")),
    "affinity:official_pairs=false": (lambda: AffinityFieldLoss(official_pairs=False),
                                      lambda x, t: ref.affinity_field_loss(x, t, official_pairs=False)),
    "lad:pool=batch": (lambda: LADLoss(kernel_size=5, pool="batch"), lambda x, t: ref.lad_loss(x, t, pool="batch")),
}


@pytest.mark.parametrize("name", QUICK_LOSSES)
def test_fast_matches_reference_on_a_small_voc_like_batch(name, batch_strategy):
    """The quick tier's version of the comparisons above: 2 x 21 classes x 21x21."""
    logits, target = voc_like(size=21, seed=1)
    make, reference = QUICK_LOSSES[name]
    assert_matches(make().double(), reference, logits, target, ("quick", name))


def test_batch_strategy_chooses_the_groups_of_images():
    from segrepro.losses import batch_strategy
    from segrepro.losses._chunks import image_groups

    x = torch.zeros(3, 1, 1, 1)
    assert image_groups(x) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # auto on CPU: per image
    with batch_strategy("whole_batch"):
        assert image_groups(x) == [slice(None)]
        with batch_strategy("per_image"):
            assert len(image_groups(x)) == 3
        assert image_groups(x) == [slice(None)]
    assert len(image_groups(x)) == 3
    with pytest.raises(ValueError, match="batch strategy"):
        with batch_strategy("by_row"):
            pass


def test_ssl_reference_matches_loop_oracle():
    from .test_losses_ssl import reference_e, reference_loss
    from .window_reference import sample
    logits, target = sample(seed=1)
    kwargs = dict(beta=0.3, lam=0.3)
    torch.testing.assert_close(ref.ssl_error_map(logits, target), reference_e(logits, target),
                               rtol=1e-12, atol=1e-12)
    expected, expected_grad = value_and_grad(lambda x, t: reference_loss(x, t, **kwargs)[0], logits, target)
    value, grad = value_and_grad(lambda x, t: ref.ssl_loss(x, t, **kwargs), logits, target)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["eq7", "eq9"])
def test_ssim_reference_matches_loop_oracle(form):
    from .test_losses_ssim import reference
    from .window_reference import sample
    logits, target = sample()
    expected, expected_grad = value_and_grad(lambda x, t: reference(x, t, 5, 1.0, form, 0.3), logits, target)
    value, grad = value_and_grad(
        lambda x, t: ref.ssim_loss(x, t, window_size=5, sigma=1.0, form=form, lam=0.3), logits, target)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("official_pairs", [True, False])
@pytest.mark.parametrize("kernel_size", [3, 5, 1])
def test_affinity_reference_matches_loop_oracle(kernel_size, official_pairs):
    from .test_losses_affinity import reference, sample
    logits, target = sample()

    def oracle(x, t):
        ce, edge, non_edge = reference(x, t, kernel_size, margin=2.0, official_pairs=official_pairs)
        return ce + 10**-0.4 * (0.7 * edge + 1.3 * non_edge)
    expected, expected_grad = value_and_grad(oracle, logits, target)
    value, grad = value_and_grad(lambda x, t: ref.affinity_field_loss(
        x, t, kernel_size=kernel_size, margin=2.0, lam_edge=0.7, lam_nonedge=1.3, progress=0.4,
        official_pairs=official_pairs), logits, target)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("pool", ["image", "batch"])
@pytest.mark.parametrize("kernel_size,k,stride", [(3, 3.0, 1), (5, 2.5, 2), (1, 3.0, 1)])
def test_lad_reference_matches_loop_oracle(kernel_size, k, stride, pool):
    from .test_losses_lad import reference_local, reference_loss, sample
    logits, target = sample(seed=1)
    local, valid = ref.lad_local_losses(logits, target, kernel_size=kernel_size, stride=stride)
    ref_local, ref_valid = reference_local(logits, target, kernel_size, stride)
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(local, ref_local, rtol=1e-12, atol=1e-12)
    expected, expected_grad = value_and_grad(lambda x, t: reference_loss(x, t, kernel_size, k, stride, pool),
                                             logits, target)
    value, grad = value_and_grad(
        lambda x, t: ref.lad_loss(x, t, kernel_size=kernel_size, k=k, stride=stride, pool=pool), logits, target)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# SSL Figure 2, through the reference's pieces
# ---------------------------------------------------------------------------------------------------------

def test_figure2_worked_example():
    """Ground truth and prediction of Figure 2, one binary channel, statistics over the whole 3x3 patch (a
    uniform 5x5 window renormalized over the in-image pixels covers it from every pixel), C4 = 0."""
    y = torch.tensor([[0, 0, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.float64)[None, None]
    p = torch.tensor([[.1, .1, .1], [.8, .8, .9], [.8, .9, .8]], dtype=torch.float64)[None, None]
    mask = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    window = ref.gaussian_window(5, None)
    y_nor = ref.ssl_normalized(y, mask, window, c4=0.0)
    p_nor = ref.ssl_normalized(p, mask, window, c4=0.0)
    # Figure 2 (c) and (d), to the figure's two significant digits.
    assert [[f"{v:.2g}" for v in row] for row in y_nor[0, 0].tolist()] == [
        ["-1.1", "-1.1", "-1.1"], ["0.89", "-1.1", "0.89"], ["0.89", "0.89", "0.89"]]
    assert [[f"{v:.2g}" for v in row] for row in p_nor[0, 0].tolist()] == [
        ["-1.4", "-1.4", "-1.4"], ["0.61", "0.61", "0.89"], ["0.61", "0.89", "0.61"]]
    bce = F.binary_cross_entropy(p, y, reduction="none")[0, 0]
    weighted = (y_nor - p_nor).abs()[0, 0] * bce
    assert bce.sum().item() == pytest.approx(2.805, abs=1e-3)
    assert (bce[1, 1] / bce.sum()).item() == pytest.approx(0.57, abs=0.01)
    assert weighted.sum().item() == pytest.approx(3.060, abs=1e-3)
    assert (weighted[1, 1] / weighted.sum()).item() == pytest.approx(0.91, abs=0.01)
    # The same through ssl_error_map (class 1 of two), and with the default C4 = 0.01: 2.996.
    x = torch.logit(p)
    labels = y[:, 0].long()
    for c4, total in ((0.0, 3.060), (0.01, 2.996)):
        e = ref.ssl_error_map(torch.cat([-x, x], 1), labels, region_size=5, sigma=None, c4=c4)[0, 1]
        assert (e * bce).sum().item() == pytest.approx(total, abs=1e-3)


def test_e_max_is_the_range_of_the_normalized_ground_truth():
    for size, sigma in [(3, 1.5), (7, 3.0), (5, None)]:
        w = ref.gaussian_window(size, sigma)
        w_c = float(w[size // 2, size // 2])
        y_max = (1 - w_c + 0.01) / (math.sqrt(w_c * (1 - w_c)) + 0.01)  # center 1, the rest 0
        y_min = (0 - (1 - w_c) + 0.01) / (math.sqrt(w_c * (1 - w_c)) + 0.01)  # center 0, the rest 1
        assert ref.ssl_e_max(size, sigma) == pytest.approx(y_max - y_min, rel=1e-12)
        assert ref.ssl_e_max(size, sigma) == pytest.approx(SSLLoss(region_size=size, sigma=sigma).e_max, rel=1e-12)
    assert ref.ssl_e_max(1, 1.5) == 0.0


# ---------------------------------------------------------------------------------------------------------
# Pieces and the common contract
# ---------------------------------------------------------------------------------------------------------

def test_window_and_shift():
    w = ref.gaussian_window(5, 1.5)
    assert w.sum().item() == pytest.approx(1.0, rel=1e-15)
    assert w[2, 3].item() == pytest.approx(w[2, 2].item() * math.exp(-1 / (2 * 1.5**2)), rel=1e-14)
    assert torch.equal(ref.gaussian_window(3, None), torch.full((3, 3), 1 / 9, dtype=torch.float64))
    t = torch.arange(12).view(1, 3, 4)
    out = ref.shift(t, 1, -1, -7)
    assert out[0, 0, 1] == t[0, 1, 0] and (out[0, :, 0] == -7).all() and (out[0, 2] == -7).all()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [3, 7])
def test_local_mean_is_exact_on_flat_windows_and_nan_free(size, dtype, layout):
    """Where every valid pixel of a window holds 1 the mean is exactly 1 (numerator and denominator are
    the same convolution, in the layout of ``v``: the one-hot map is channels-last): a window of one label
    has var_y = 0 and y_nor = 1. A center whose window has no valid pixel gives 0 and no NaN in values or
    gradients."""
    mask = torch.ones(2, 1, 15, 15, dtype=dtype)
    mask[:, :, 5:10, 4:11] = 0  # center (7, 7) sees no valid pixel in a 3x3 window
    mask[1, :, 0, :] = 0
    v = torch.rand(2, 3, 15, 15, generator=torch.Generator().manual_seed(0), dtype=dtype)
    v[:, 1] = 1.0
    v = v.contiguous(memory_format=layout).requires_grad_()
    window = ref.gaussian_window(size, 1.5, dtype)
    mean = ref.local_mean(v, mask, window)
    if size == 3:
        assert mean[0, 0, 7, 7] == 0
    ones = mean[:, 1][ref.window_sum(mask, window)[:, 0] > 0]
    assert torch.equal(ones, torch.ones_like(ones))
    mean.sum().backward()
    assert torch.isfinite(v.grad).all()


LOSSES = {
    "ssl": ref.ssl_loss, "ssim": ref.ssim_loss, "affinity": ref.affinity_field_loss, "lad": ref.lad_loss,
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reference_contract(name):
    fn = LOSSES[name]
    logits, target = voc_like(n=1, c=4, size=12, seed=3)
    # All ignored: a zero that keeps the graph.
    x = logits.clone().requires_grad_()
    zero = fn(x, torch.full_like(target, IGNORE))
    assert zero.item() == 0 and zero.requires_grad
    zero.backward()
    assert torch.count_nonzero(x.grad) == 0
    # Half precision is computed in float32 inside; float64 stays float64.
    assert fn(logits, target).dtype == torch.float64
    low = fn(logits.bfloat16(), target)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, fn(logits.bfloat16().float(), target))
    # Bad input names the problem.
    with pytest.raises(ValueError, match="label"):
        fn(logits, torch.full_like(target, 4))
    with pytest.raises(ValueError, match="shape"):
        fn(logits, target[:, :-1])
