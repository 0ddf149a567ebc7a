"""Softmax cross entropy (LAD Eq. 4 baseline, SSL Eq. 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._functional import autocast_off, prepare, zero_with_graph


class CrossEntropyLoss(nn.Module):
    """Softmax cross entropy, mean over the valid (non-ignored) pixels."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return zero_with_graph(x)
            return F.cross_entropy(x, target, ignore_index=self.ignore_index)
