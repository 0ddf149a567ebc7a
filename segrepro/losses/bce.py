"""One-vs-rest sigmoid cross entropy (the BCE baseline of SSL Table 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._functional import autocast_off, masked_mean, one_hot, prepare, zero_with_graph


def bce_map(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-(pixel, class) sigmoid cross entropy against the one-hot target, ``[N, C, H, W]``."""
    y = one_hot(target, valid, x.shape[1], x.dtype)
    return F.binary_cross_entropy_with_logits(x, y, reduction="none")


class BCELoss(nn.Module):
    """Sigmoid cross entropy of every class channel against the one-hot target,
    mean over the valid (pixel, class) entries."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return zero_with_graph(x)
            return masked_mean(bce_map(x, target, valid), valid.unsqueeze(1))
