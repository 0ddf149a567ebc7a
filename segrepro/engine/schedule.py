"""Poly learning-rate schedule with an optional slow start (DeepLab; SSL Sec. 4, LAD Sec. 4).

One factor for every parameter group: ``LambdaLR`` sets each group's learning rate to the
group's own initial rate times the factor, so a group at ``m`` times ``optim.lr`` (the head's,
``optim.head_lr_mult``) stays at ``m`` times the base group's through the slow start and the
poly decay, as TF DeepLab's gradient multipliers and Caffe's ``lr_mult`` scale every step.
"""
from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


def poly_factor(step: int, base_lr: float, max_iters: int, power: float,
                warmup_iters: int = 0, warmup_lr: float = 0.0) -> float:
    """Multiplier of ``base_lr`` at ``step``: ``warmup_lr / base_lr`` for the first ``warmup_iters``
    steps (slow start), then ``(1 - step / max_iters) ** power``."""
    if step < warmup_iters:
        return warmup_lr / base_lr
    return max(0.0, 1.0 - step / max_iters) ** power


def poly_lr_scheduler(optimizer, optim_cfg, max_iters: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: poly_factor(
        step, optim_cfg.lr, max_iters, optim_cfg.power, optim_cfg.warmup_iters, optim_cfg.warmup_lr))
