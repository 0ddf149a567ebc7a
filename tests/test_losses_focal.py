"""FocalLoss against a per-pixel float64 reference written from the spec."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segrepro.losses import CrossEntropyLoss, FocalLoss

IGNORE = 255


def reference(logits, target, alpha, gamma):
    n, c, height, width = logits.shape
    total, count = 0.0, 0
    for b in range(n):
        for i in range(height):
            for j in range(width):
                y = int(target[b, i, j])
                if y == IGNORE:
                    continue
                v = [float(t) for t in logits[b, :, i, j]]
                log_z = math.log(sum(math.exp(t) for t in v))
                p_t = math.exp(v[y] - log_z)
                total += -alpha * (1 - p_t) ** gamma * (v[y] - log_z)
                count += 1
    return total / count


def sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, 5, 4, 6, dtype=torch.float64, generator=g)
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[torch.rand(2, 4, 6, generator=g) < 0.25] = IGNORE
    return logits, target


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (1.0, 0.5), (0.5, 3.0)])
def test_matches_reference(alpha, gamma):
    logits, target = sample()
    value = FocalLoss(alpha, gamma)(logits, target)
    assert value.item() == pytest.approx(reference(logits, target, alpha, gamma), rel=1e-12)


def test_gamma_0_alpha_1_is_cross_entropy():
    logits, target = sample(1)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    focal = FocalLoss(alpha=1.0, gamma=0.0)(a, target)
    ce = CrossEntropyLoss()(b, target)
    torch.testing.assert_close(focal, ce, rtol=1e-12, atol=0)
    focal.backward()
    ce.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)


def test_gradcheck():
    logits, target = sample(2)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: FocalLoss()(z, target), (logits,))


def test_confident_pixels_are_down_weighted():
    # p_t -> 1: the focal term vanishes faster than CE (factor (1 - p_t)^gamma).
    logits = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    logits[0, 0, 0, 0] = 8.0
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    target[0, 0, 1] = IGNORE
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    p_t = torch.softmax(logits[0, :, 0, 0], 0)[0]
    torch.testing.assert_close(FocalLoss(0.25, 2.0)(logits, target), 0.25 * (1 - p_t) ** 2 * ce)


def test_ignored_pixels_get_no_gradient():
    logits, target = sample(3)
    logits.requires_grad_()
    FocalLoss()(logits, target).backward()
    assert torch.count_nonzero(logits.grad.permute(0, 2, 3, 1)[target == IGNORE]) == 0


def test_negative_gamma_is_rejected():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
