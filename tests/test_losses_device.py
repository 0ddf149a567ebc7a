"""The windowed losses on a device, in float32, against the float64 CPU reference (segrepro/losses/reference.py).

Each test takes ``device``: ``cpu`` always, ``cuda`` when a GPU is present (skipped cleanly otherwise), so the
same checks run on every machine and ``scripts/gpu_check.sh`` runs them on the GPU. Both batch strategies
(``per_image``: the CPU default, ``whole_batch``: the GPU default) are run on every device.

Tolerances are float32's, not float64's (``tests/test_losses_reference.py`` checks the float64 fast paths to
1e-13). Observed on CPU (2 x 21 classes x 33x33, three seeds): values within 1e-7 relative, gradients within
1e-4 of their largest entry (SSIM's are the loosest, 8e-5); one seed is run, to stay fast.

SSL's variance ``E[p^2] - mu^2`` cancels where ``p`` is flat over a window: its float32 error is bounded by a
few ulps of ``E[p^2]`` (observed on CPU: at most 4.6 eps E[p^2]) as long as the window sums are float32 sums.
``test_ssl_variance_float32_matches_float64`` checks that bound with TF32 allowed and disallowed
(``torch.backends.cudnn.allow_tf32``, ``torch.backends.cuda.matmul.allow_tf32``): TF32 keeps 10 mantissa bits,
about 2^12 times float32's rounding, so a depthwise convolution run in TF32 fails it by far. On CPU the flags
change nothing and the test still runs. If it fails on a GPU with TF32 allowed (cuDNN's default is allowed),
the window convolutions in ``segrepro/losses/_stats.py`` need their precision pinned.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from segrepro.losses import AffinityFieldLoss, LADLoss, SSIMLoss, SSLLoss, batch_strategy
from segrepro.losses import reference as ref
from segrepro.losses._stats import LocalStats

from .test_losses_reference import IGNORE, voc_like

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="no CUDA device"))]
SIZE = 33
SEEDS = [0]
VALUE_RTOL = 1e-5
GRAD_ATOL = 5e-4  # times the largest entry of the reference gradient
GRAD_RTOL = 1e-3
VARIANCE_ULPS = 16  # |var32 - var64| <= VARIANCE_ULPS * eps32 * E[p^2]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=["per_image", "whole_batch"])
def strategy(request):
    with batch_strategy(request.param):
        yield request.param


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 for cuDNN convolutions and CUDA matmuls allowed or not within the block (restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def value_and_grad(fn, logits, target):
    x = logits.clone().requires_grad_()
    value = fn(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


# (name, fast loss factory, float64 reference); the affinity loss at training progress 0.3.
CASES = {
    "ssl": (lambda: SSLLoss(), ref.ssl_loss),
    "ssl_r7": (lambda: SSLLoss(region_size=7, sigma=3.0), lambda x, t: ref.ssl_loss(x, t, region_size=7, sigma=3.0)),
    "ssim_eq7": (lambda: SSIMLoss(form="eq7"), lambda x, t: ref.ssim_loss(x, t, form="eq7")),
    "ssim_eq9": (lambda: SSIMLoss(form="eq9"), lambda x, t: ref.ssim_loss(x, t, form="eq9")),
    "affinity": (lambda: AffinityFieldLoss(), lambda x, t: ref.affinity_field_loss(x, t, progress=0.3)),
    "affinity_k5": (lambda: AffinityFieldLoss(kernel_size=5),
                    lambda x, t: ref.affinity_field_loss(x, t, kernel_size=5, progress=0.3)),
    "lad_k3": (lambda: LADLoss(kernel_size=3), lambda x, t: ref.lad_loss(x, t, kernel_size=3)),
    "lad_k5": (lambda: LADLoss(kernel_size=5), lambda x, t: ref.lad_loss(x, t, kernel_size=5)),
    "lad_k5_s2": (lambda: LADLoss(kernel_size=5, stride=2), lambda x, t: ref.lad_loss(x, t, kernel_size=5, stride=2)),
}
_REFERENCE = {}  # (case, seed) -> float64 CPU value and gradient; (case, seed, "e") -> SSL's error map


@pytest.fixture(scope="module")
def batches():
    return {seed: voc_like(n=2, size=SIZE, seed=seed) for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(CASES))
def test_windowed_loss_float32_on_device_matches_float64_reference(name, seed, device, strategy, batches,
                                                                   record_property):
    logits, target = batches[seed]
    make, reference = CASES[name]
    if (name, seed) not in _REFERENCE:
        _REFERENCE[name, seed] = value_and_grad(reference, logits, target)
    expected, expected_grad = _REFERENCE[name, seed]
    loss = make().to(device)
    if hasattr(loss, "set_progress"):
        loss.set_progress(0.3)
    x32, t = logits.float().to(device), target.to(device)
    value, grad = value_and_grad(loss, x32, t)
    assert value.dtype == grad.dtype == torch.float32 and grad.device.type == device.type
    value, grad = value.cpu().double(), grad.cpu().double()
    assert torch.isfinite(value) and torch.isfinite(grad).all()

    compared = torch.ones_like(grad, dtype=torch.bool)
    value_rtol = VALUE_RTOL
    if isinstance(loss, SSLLoss) and loss.ohem:
        # Eq. 11's hard mask compares e with beta * e_max: an entry near the threshold may be hard in float32 and
        # not in float64. Such entries are counted; their gradients are left out of the comparison.
        threshold = loss.beta * loss.e_max
        if (name, seed, "e") not in _REFERENCE:
            window = dict(region_size=loss.region_size, sigma=loss.sigma)
            _REFERENCE[name, seed, "e"] = ref.ssl_error_map(logits, target, **window)
        hard64 = _REFERENCE[name, seed, "e"] > threshold
        flipped = (loss.error_map(x32, t).cpu().double() > threshold) != hard64
        flipped &= (target != IGNORE).unsqueeze(1)
        compared &= ~flipped
        if flipped.any():  # each flip moves the mean over the hard entries by about 1 / (their count)
            value_rtol = 1e-3
        record_property("hard_mask_flips", int(flipped.sum()))
    scale = expected_grad.abs().max()
    value_error = float((value - expected).abs() / expected.abs())
    grad_error = float(((grad - expected_grad).abs() * compared).max() / scale)
    record_property("value_rel_error", f"{value_error:.2e}")
    record_property("grad_error_over_max", f"{grad_error:.2e}")
    torch.testing.assert_close(value, expected, rtol=value_rtol, atol=0)
    torch.testing.assert_close(grad[compared], expected_grad[compared], rtol=GRAD_RTOL, atol=GRAD_ATOL * float(scale))


def saturated_probabilities(n=2, c=4, size=49, seed=0):
    """float32 ``p = sigmoid(x)`` on ``[n, c, size, size]``, zero at ignored pixels (10 %), with a saturated
    square (``p`` about 1 - 3e-4, flat: the variance cancels there) and a square of exact ones; and the mask."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(n, size, size, generator=g) > 0.1
    x = 4.0 * torch.randn(n, c, size, size, generator=g)
    x[:, :, 8:24, 8:24] = 8.0
    x[:, :, 30:45, 5:20] = 30.0
    return torch.sigmoid(x) * valid.unsqueeze(1), valid


@pytest.mark.parametrize("tf32_allowed", [False, True], ids=["tf32_off", "tf32_on"])
@pytest.mark.parametrize("window", [(3, 1.5), (7, 3.0), (11, None)], ids=["r3", "r7", "r11_uniform"])
def test_ssl_variance_float32_matches_float64(window, tf32_allowed, device, record_property):
    """``E[p^2] - mu^2`` of the fast window sums (``LocalStats``, float32, channels-last, on ``device``) against
    the float64 CPU reference ``reference.local_stats`` of the same float32 ``p``."""
    size, sigma = window
    p, valid = saturated_probabilities()
    _, expected = ref.local_stats(p.double(), valid.unsqueeze(1).double(), ref.gaussian_window(size, sigma))
    expected_p2 = ref.local_mean((p * p).double(), valid.unsqueeze(1).double(), ref.gaussian_window(size, sigma))
    with tf32(tf32_allowed):
        stats = LocalStats(size, sigma, valid.to(device), torch.float32)
        v = p.to(device).contiguous(memory_format=torch.channels_last)
        mu = stats.mean(v)
        var = stats.mean(v * v).sub_(mu * mu)  # as ssl.normalized_parts computes it
    assert var.dtype == torch.float32
    err = (var.cpu().double() - expected).abs()
    centers = valid.unsqueeze(1).expand_as(err)
    ulps = (err / (torch.finfo(torch.float32).eps * expected_p2))[centers]
    record_property("max_error_in_eps_times_Ep2", f"{float(ulps.max()):.2f}")
    record_property("max_abs_error", f"{float(err[centers].max()):.2e}")
    assert float(ulps.max()) <= VARIANCE_ULPS, (
        f"float32 variance off by {float(ulps.max()):.1f} eps E[p^2] (bound {VARIANCE_ULPS}) on {device} with "
        f"TF32 {'allowed' if tf32_allowed else 'disallowed'}: pin the window convolutions' precision")
