"""Shared by the SSL and SSIM tests: small float64 samples and the window written from the spec's words."""
from __future__ import annotations

import math

import torch

IGNORE = 255


def sample(n=2, c=3, size=7, seed=0):
    """float64 logits and labels with ignored pixels, two of them on the border."""
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, c, size, size, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, size, size), generator=g)
    target[torch.rand(n, size, size, generator=g) < 0.15] = IGNORE
    target[0, 0, 0] = target[1, size - 1, 3] = IGNORE
    return logits, target


def window_weights(size, sigma):
    """The full window, unit sum, from the spec's words: circular Gaussian of std sigma, or uniform."""
    r = size // 2
    w = {(a, b): 1.0 if sigma is None else math.exp(-(a * a + b * b) / (2 * sigma * sigma))
         for a in range(-r, r + 1) for b in range(-r, r + 1)}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


def valid_entries(target, num_classes):
    """``(n, c, i, j, y)`` for every valid (pixel, class) entry, ``y`` the float64 one-hot map of class ``c``
    in image ``n``."""
    n_, h, w = target.shape
    for n in range(n_):
        for c in range(num_classes):
            y = (target[n] == c).double()
            for i in range(h):
                for j in range(w):
                    if target[n, i, j] != IGNORE:
                        yield n, c, i, j, y


def sample_with_absent_classes(seed=0):
    """Like :func:`sample` with 6 classes of which only 1 and 4 are present: absent classes come both
    before and between the present ones."""
    logits, target = sample(c=6, seed=seed)
    labels = target.clone()
    labels[target != IGNORE] = torch.where(target[target != IGNORE] % 2 == 0, 1, 4)
    return logits, labels


def value_and_grad(loss, logits, target):
    x = logits.clone().requires_grad_()
    value = loss(x, target)
    return value, torch.autograd.grad(value, x)[0]


def assert_absent_shortcut_is_exact(monkeypatch, run, bitwise=True):
    """``run()`` gives the same tensors when :class:`PresentFirst` treats every class as present (the general
    path, which computes the statistics of the absent classes' zero maps): bit for bit, or (``bitwise=False``,
    a closed form that rounds differently; run it in float64) to rounding."""
    from segrepro.losses import _chunks

    fast = run()
    original = _chunks.PresentFirst

    def every_class_present(target, valid, num_classes):
        order = original(target, valid, num_classes)
        order.chunks = [chunk._replace(present=True) for chunk in order.chunks]
        return order
    monkeypatch.setattr(_chunks, "PresentFirst", every_class_present)
    for a, b in zip(fast, run(), strict=True):
        if bitwise:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
