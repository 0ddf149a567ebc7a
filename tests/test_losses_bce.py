"""BCELoss: the two reductions of the one-vs-rest sigmoid cross entropy (spec "BCE"; SSL Eq. 1)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segrepro.losses import BCELoss

from .window_reference import sample

IGNORE = 255


def by_loops(logits, target, reduction):
    """Per valid pixel, the sum over classes of -(y log p + (1 - y) log(1 - p)); averaged over the pixels
    ("pixel") or over the pixels times the classes ("entry")."""
    n_, c_, h, w = logits.shape
    total, pixels = 0.0, 0
    for n in range(n_):
        for i in range(h):
            for j in range(w):
                if target[n, i, j] == IGNORE:
                    continue
                pixels += 1
                for c in range(c_):
                    y = torch.tensor(float(target[n, i, j] == c), dtype=logits.dtype)
                    total = total + F.binary_cross_entropy_with_logits(logits[n, c, i, j], y)
    return total / (pixels if reduction == "pixel" else pixels * c_)


@pytest.mark.parametrize("reduction", ["entry", "pixel"])
def test_reductions_match_loops(reduction):
    logits, target = sample(c=5, size=6)
    x = logits.clone().requires_grad_()
    value = BCELoss(reduction=reduction)(x, target)
    x_ref = logits.clone().requires_grad_()
    expected = by_loops(x_ref, target, reduction)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(value, x)[0], torch.autograd.grad(expected, x_ref)[0],
                               rtol=1e-10, atol=1e-15)


def test_pixel_is_c_times_entry():
    logits, target = sample(c=5, size=6, seed=1)
    c = logits.shape[1]
    x = logits.clone().requires_grad_()
    entry, pixel = BCELoss(reduction="entry")(x, target), BCELoss()(x, target)  # pixel: the default
    torch.testing.assert_close(pixel, c * entry, rtol=1e-13, atol=0)
    (grad_entry,) = torch.autograd.grad(entry, x)
    (grad_pixel,) = torch.autograd.grad(pixel, x)
    torch.testing.assert_close(grad_pixel, c * grad_entry, rtol=1e-13, atol=0)
    assert torch.count_nonzero(grad_pixel.permute(1, 0, 2, 3)[:, target == IGNORE]) == 0


def test_bad_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        BCELoss(reduction="sum")
