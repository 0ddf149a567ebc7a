"""Softmax cross entropy (LAD Eq. 4 baseline, SSL Eq. 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._functional import PixelLoss


class CrossEntropyLoss(PixelLoss):
    """Softmax cross entropy, mean over the valid (non-ignored) pixels."""

    def compute(self, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x, target, ignore_index=self.ignore_index)
