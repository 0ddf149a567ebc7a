"""Shared functional core of the losses: input checks, dtype policy, masks.

Every loss in :mod:`segrepro.losses` follows one contract: ``logits [N, C, H, W]``,
``target [N, H, W]`` int64 with values in ``0..C-1`` or ``ignore_index``;
ignored pixels contribute nothing; an all-ignored batch gives a zero that
keeps the graph; bad input is a ``ValueError`` naming the problem; half
precision and autocast inputs are computed in float32.
"""
from __future__ import annotations

import torch

from .base import SegmentationLoss


def check_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """Raise ``ValueError`` for wrong ranks, mismatched sizes or out-of-range labels."""
    if not torch.is_tensor(logits) or logits.dim() != 4:
        raise ValueError(f"logits must be a [N, C, H, W] tensor, got shape {tuple(getattr(logits, 'shape', ()))}")
    if not torch.is_tensor(target) or target.dim() != 3:
        raise ValueError(f"target must be a [N, H, W] tensor, got shape {tuple(getattr(target, 'shape', ()))}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    n, c, h, w = logits.shape
    if target.shape != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected {(n, h, w)}"
        )
    bad = (target != ignore_index) & ((target < 0) | (target >= c))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target holds label {value} outside 0..{c - 1} that is not ignore_index={ignore_index}"
        )


def check_window(name: str, size: int) -> None:
    """A window size must be a positive odd integer."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {size!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fraction(name: str, value, upper_open: bool = False) -> None:
    """``value`` is a number in ``[0, 1]`` (``[0, 1)`` with ``upper_open``)."""
    if not (_is_number(value) and 0 <= value and (value < 1 if upper_open else value <= 1)):
        raise ValueError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value!r}")


def check_positive(name: str, value, integer: bool = False, zero: bool = False) -> None:
    """``value`` is a positive number (an int with ``integer``; 0 allowed with ``zero``)."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (value >= 0 if zero else value > 0):
        what = "a non-negative" if zero else "a positive"
        raise ValueError(f"{name} must be {what} {'integer' if integer else 'number'}, got {value!r}")


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# impl of a windowed loss: "fast" (chunked, own gradient) or "reference" (segrepro.losses.reference)
IMPLEMENTATIONS = ("fast", "reference")
# reduction of a BCE (BCELoss, the BCE terms of SSL and SSIM): "entry", the mean over the valid (pixel, class)
# entries, or "pixel", summed over the classes and averaged over the valid pixels (SSL Eq. 1): C times "entry"
REDUCTIONS = ("entry", "pixel")


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp32, bf16, fp16) is computed in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def prepare(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Check the inputs and return ``(logits in the compute dtype, target as int64, valid mask)``."""
    check_inputs(logits, target, ignore_index)
    target = target.long()
    return logits.to(compute_dtype(logits)), target, target != ignore_index


def zero_with_graph(logits: torch.Tensor) -> torch.Tensor:
    """The loss of a batch with no valid pixel: a zero that still has a graph."""
    return logits.sum() * 0.0


def one_hot(target: torch.Tensor, valid: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[N, H, W]`` labels to a ``[N, C, H, W]`` one-hot map; ignored pixels are all zero."""
    safe = torch.where(valid, target, 0).unsqueeze(1)
    y = torch.zeros((target.shape[0], num_classes) + tuple(target.shape[1:]), dtype=dtype, device=target.device)
    return y.scatter_(1, safe, valid.unsqueeze(1).to(dtype))


def log_q(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``log q`` with ``q = sigmoid(x)`` where ``y = 1`` and ``sigmoid(-x)`` where ``y = 0`` (the probability
    given to the target side): minus the per-entry BCE. ``q`` is kept above the dtype's smallest normal
    number, so an entry's BCE saturates at about 87 in float32 (``|x| > 87``); a plain sigmoid and log
    rather than ``F.logsigmoid`` (docs/performance.md). ``y=None`` stands for a map of zeros (an absent class)."""
    signed = x.neg() if y is None else torch.addcmul(x, x, y, value=-2.0).neg_()  # x (2 y - 1)
    return signed.sigmoid_().clamp_(min=torch.finfo(x.dtype).tiny).log_()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (same shape, or broadcastable); 0 with a graph when empty."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def autocast_off(device_type: str):
    """A context that disables autocast so window convolutions stay in float32."""
    return torch.autocast(device_type=device_type, enabled=False)


class PixelLoss(SegmentationLoss):
    """Base of the losses computed from ``(logits, target)`` alone.

    ``forward`` applies the common contract (checks, float32 inside for half
    precision and autocast, a zero with a graph for an all-ignored batch) and
    hands ``(logits in the compute dtype, target int64, valid mask)`` to
    :meth:`compute`, which subclasses implement.
    """

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def compute(self, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return zero_with_graph(x)
            return self.compute(x, target, valid)
