"""One-vs-rest sigmoid cross entropy (the BCE baseline of SSL Table 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._functional import REDUCTIONS, PixelLoss, check_choice, masked_mean, one_hot


def bce_map(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-(pixel, class) sigmoid cross entropy against the one-hot target, ``[N, C, H, W]``."""
    y = one_hot(target, valid, x.shape[1], x.dtype)
    return F.binary_cross_entropy_with_logits(x, y, reduction="none")


class BCELoss(PixelLoss):
    """Sigmoid cross entropy of every class channel against the one-hot target: summed over the classes
    and averaged over the valid pixels (``reduction="pixel"``, the default: the ``-1/N sum_n sum_c`` of SSL
    Eq. 1), or the mean over the valid (pixel, class) entries (``reduction="entry"``, the spec's form:
    ``C`` times smaller, gradient included; docs/fidelity.md, "The scale of BCE", says why not)."""

    def __init__(self, ignore_index: int = 255, reduction: str = "pixel"):
        super().__init__(ignore_index)
        check_choice("reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    def compute(self, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        bce = bce_map(x, target, valid)
        if self.reduction == "pixel":
            return masked_mean(bce.sum(1), valid)
        return masked_mean(bce, valid.unsqueeze(1))
