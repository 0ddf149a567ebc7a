"""One-vs-rest sigmoid cross entropy (the BCE baseline of SSL Table 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._functional import PixelLoss, masked_mean, one_hot


def bce_map(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-(pixel, class) sigmoid cross entropy against the one-hot target, ``[N, C, H, W]``."""
    y = one_hot(target, valid, x.shape[1], x.dtype)
    return F.binary_cross_entropy_with_logits(x, y, reduction="none")


class BCELoss(PixelLoss):
    """Sigmoid cross entropy of every class channel against the one-hot target,
    mean over the valid (pixel, class) entries."""

    def compute(self, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return masked_mean(bce_map(x, target, valid), valid.unsqueeze(1))
