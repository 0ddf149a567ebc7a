"""Softmax focal loss (Lin et al. 2017), the focal baseline of LAD Table 2."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._functional import PixelLoss, masked_mean


class FocalLoss(PixelLoss):
    """``-alpha * (1 - p_t)^gamma * log(p_t)`` with ``p_t`` the softmax probability
    of the true class, mean over the valid pixels. ``gamma=0, alpha=1`` is the
    cross entropy of :class:`CrossEntropyLoss`.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, ignore_index: int = 255):
        super().__init__(ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.alpha = alpha
        self.gamma = gamma

    def compute(self, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        safe = torch.where(valid, target, 0).unsqueeze(1)
        log_pt = F.log_softmax(x, dim=1).gather(1, safe).squeeze(1)
        # 1 - p_t as -expm1(log p_t): exact for p_t near 1, never negative.
        focal = -self.alpha * (-torch.expm1(log_pt)).pow(self.gamma) * log_pt
        return masked_mean(focal, valid)
