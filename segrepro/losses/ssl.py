"""Structural similarity loss (SSL paper, Section 3, Eqs. 10-17)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ._functional import autocast_off, check_window, prepare
from ._window import (
    LocalStats, PresentFirst, center_weight, check_sigma, chunks_in_order, class_chunks, eager_forward, eager_terms,
    gather_classes, log_q, normalized_parts, normalized_zero, one_hot_chunk, scatter_classes,
)

TERMS = ("bce", "ssl", "hard_fraction", "norm_pred_min", "norm_pred_max", "norm_gt_min", "norm_gt_max",
         "e_max", "e_mean", "e_median")


def _check_fraction(name: str, value, upper_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value and (
        value < 1 if upper_open else value <= 1
    )
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value!r}")


class SSLLoss(nn.Module):
    """``lam * BCE + (1 - lam) * L_ssl`` (SSL Eq. 17).

    ``p = sigmoid(logits)`` and the one-hot target ``y`` are ``C`` binary maps.
    Both are normalized with their local statistics (Eqs. 14-15, window of
    ``region_size`` and Gaussian ``sigma``, ``None`` for uniform; statistics over
    the in-image, non-ignored pixels only, weights renormalized), and
    ``e = |y_nor - p_nor|`` (Eq. 10) is a constant weight (no gradient).
    Entries with ``e > beta * e_max`` are hard (Eq. 11, all valid entries when
    ``ohem=False``), ``e_max = 2 (1 - w_c) / (sqrt(w_c (1 - w_c)) + c4)`` the
    theoretical range of ``y_nor`` (Sec. 3.3, ``w_c`` the center weight of the
    full window), and ``L_ssl = sum(e * f * bce) / max(sum(f), 1)`` over the
    valid (pixel, class) entries (Eqs. 12-13; ``e`` replaced by 1 when
    ``reweight=False``).
    """

    def __init__(
        self,
        region_size: int = 3,
        sigma: float | None = 1.5,
        beta: float = 0.1,
        lam: float = 0.5,
        c4: float = 0.01,
        ohem: bool = True,
        reweight: bool = True,
        ignore_index: int = 255,
    ):
        super().__init__()
        check_window("region_size", region_size)
        check_sigma(sigma)
        _check_fraction("beta", beta, upper_open=True)
        _check_fraction("lam", lam, upper_open=False)
        if isinstance(c4, bool) or not isinstance(c4, (int, float)) or not c4 >= 0:
            raise ValueError(f"c4 must be a non-negative number, got {c4!r}")
        self.region_size = region_size
        self.sigma = sigma
        self.beta = float(beta)
        self.lam = float(lam)
        self.c4 = float(c4)
        self.ohem = bool(ohem)
        self.reweight = bool(reweight)
        self.ignore_index = ignore_index
        w_c = center_weight(region_size, sigma)
        # region_size=1 (w_c = 1): e is 0 everywhere and so is its range.
        self.e_max = 2.0 * (1.0 - w_c) / (math.sqrt(w_c * (1.0 - w_c)) + self.c4) if w_c < 1 else 0.0

    def _parts(self, x, labels, valid, chunk, stats):
        """``((num_y, den_y), (num_p, den_p))``: ``y_nor`` and ``p_nor`` of Eq. 10 as ``num / den`` for the
        classes of ``chunk`` (channels-last, no gradient; ``labels`` in the chunk's order); both are 1 at
        ignored pixels. For classes absent from the batch the first part is None (``y_nor`` is
        ``normalized_zero(c4)``)."""
        p = gather_classes(x, chunk.classes).sigmoid_().mul_(stats.mask)
        p_parts = normalized_parts(p, stats, self.c4, binary=False)
        if not chunk.present:
            return None, p_parts
        y = one_hot_chunk(labels, valid, chunk.positions, x.dtype, channels_last=True)
        return normalized_parts(y, stats, self.c4, binary=True), p_parts

    def _error(self, x, labels, valid, chunk, stats) -> torch.Tensor:
        """``e = |y_nor - p_nor|`` (Eq. 10) for one chunk of classes, channels-last; 0 at ignored pixels."""
        y_parts, (num_p, den_p) = self._parts(x, labels, valid, chunk, stats)
        if y_parts is None:
            return num_p.div_(den_p).sub_(normalized_zero(self.c4)).abs_()
        num_y, den_y = y_parts
        return num_y.div_(den_y).addcdiv_(num_p, den_p, value=-1).abs_()

    def _hard(self, e: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. 11: ``f`` as a boolean map (``valid`` broadcasts to ``e``); ``e`` is 0 at ignored pixels,
        so they are never hard."""
        return e > self.beta * self.e_max if self.ohem else valid.expand_as(e)

    def error_map(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``e [N, C, H, W]`` of Eq. 10, detached; 0 at ignored pixels."""
        with autocast_off(logits.device.type), torch.no_grad():
            x, target, valid = prepare(logits, target, self.ignore_index)
            order = PresentFirst(target, valid, x.shape[1])
            stats = LocalStats(self.region_size, self.sigma, valid, x.dtype)
            e = torch.empty_like(x)
            for chunk in order.chunks:
                scatter_classes(e, chunk.classes, self._error(x, order.labels, valid, chunk, stats))
            return e

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return eager_forward(self._value_and_grad, logits, target, self.ignore_index)

    @torch.no_grad()
    def _value_and_grad(self, x, target, valid, with_grad: bool):
        """The objective and its gradient w.r.t. ``x`` (``e`` and ``f`` constants), in two passes over
        chunks of classes: the first stores ``e * f`` (``f`` when not reweighting) where the gradient goes
        and counts the hard entries ``M``; the second turns it into the weight
        ``w = lam / #valid + (1 - lam) e f / M`` of each entry's BCE, then into ``w (sigmoid(x) - y)``
        (computed with or without ``with_grad``: the weights are needed for the value anyway). In the first
        pass the classes present in the batch come first (:class:`PresentFirst`): absent ones skip their
        one-hot statistics."""
        order = PresentFirst(target, valid, x.shape[1])
        stats = LocalStats(self.region_size, self.sigma, valid, x.dtype)
        grad = torch.empty_like(x)
        hard = sum(self._hard_weights(x, order.labels, valid, chunk, stats, grad) for chunk in order.chunks)
        hard_scale = (1.0 - self.lam) / max(int(hard), 1)
        bce_scale = self.lam / (int(valid.sum()) * x.shape[1])
        value = sum(self._weighted_bce(x, target, valid, classes, stats, grad[:, classes], hard_scale, bce_scale)
                    for classes in class_chunks(x.shape[1]))
        return value, grad

    def _hard_weights(self, x, labels, valid, chunk, stats, out) -> torch.Tensor:
        """First pass, one chunk: ``out = e * f`` (or ``f``) at the chunk's classes; returns ``sum(f)``."""
        e = self._error(x, labels, valid, chunk, stats)
        if not self.ohem:  # f is the valid mask
            scatter_classes(out, chunk.classes, e if self.reweight else stats.mask.expand_as(e))
            return valid.sum() * e.shape[1]
        # e f in one step: entries above beta e_max keep e, the rest become 0 (e is 0 at ignored pixels).
        ef = torch.nn.functional.threshold_(e, self.beta * self.e_max, 0.0)
        f = ef > 0
        scatter_classes(out, chunk.classes, ef if self.reweight else f)
        return f.sum()  # on CPU many times faster than count_nonzero, whose time grows with the mix of zeros

    def _weighted_bce(self, x, target, valid, classes, stats, weight, hard_scale, bce_scale) -> torch.Tensor:
        """Second pass, one chunk: ``weight`` (holding ``e * f``) becomes the gradient; returns ``sum(w * bce)``."""
        weight.mul_(hard_scale).add_(stats.mask, alpha=bce_scale)
        xc, y = x[:, classes], one_hot_chunk(target, valid, classes, x.dtype)
        value = -log_q(xc, y).mul_(weight).sum()
        weight.mul_(torch.sigmoid(xc).sub_(y))
        return value

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics to log (SSL Figs. 3-4), each a scalar over the valid (pixel, class) entries.

        ``bce``: the BCE term; ``ssl``: ``L_ssl`` (Eq. 13); ``hard_fraction``:
        ``M`` over the number of valid entries (Fig. 4); ``norm_pred_min`` /
        ``norm_pred_max`` and ``norm_gt_min`` / ``norm_gt_max``: extremes of
        ``p_nor`` and ``y_nor`` (Fig. 3); ``e_max``, ``e_mean``, ``e_median``:
        the observed maximum, mean and median of ``e`` (Fig. 3; the
        theoretical bound is the attribute ``e_max``). All 0 when no pixel is valid.
        """
        return eager_terms(self._terms, logits, target, self.ignore_index, TERMS)

    def _terms(self, x, target, valid):
        stats = LocalStats(self.region_size, self.sigma, valid, x.dtype)
        sums = {k: x.new_zeros(()) for k in ("bce", "ssl", "hard")}
        extremes, errors = [], []
        for chunk in chunks_in_order(x.shape[1]):
            (num_y, den_y), (num_p, den_p) = self._parts(x, target, valid, chunk, stats)
            y_nor, p_nor = num_y.div_(den_y), num_p.div_(den_p)
            full = valid.unsqueeze(1).expand_as(y_nor)
            bce = -log_q(x[:, chunk.positions], one_hot_chunk(target, valid, chunk.positions, x.dtype))[full]
            extremes.append(torch.stack([v for t in (p_nor, y_nor) for v in t[full].aminmax()]))
            e = y_nor.sub_(p_nor).abs_()[full]
            f = self._hard(e, e.new_ones((), dtype=torch.bool))
            sums["bce"] += bce.sum()
            sums["hard"] += f.sum()
            sums["ssl"] += (bce * e if self.reweight else bce).mul_(f).sum()
            errors.append(e)
        extremes = torch.stack(extremes)
        errors = torch.cat(errors)
        count = errors.numel()
        return (
            sums["bce"] / count, sums["ssl"] / sums["hard"].clamp(min=1), sums["hard"] / count,
            extremes[:, 0].min(), extremes[:, 1].max(), extremes[:, 2].min(), extremes[:, 3].max(),
            errors.max(), errors.mean(), errors.median(),
        )
