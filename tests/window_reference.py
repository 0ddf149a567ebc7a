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
