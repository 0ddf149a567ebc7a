"""Structural similarity loss (SSL paper, Section 3, Eqs. 10-17).

To read this loss against the paper, start with :func:`segrepro.losses.reference.ssl_loss`: the same loss in
plain autograd, equation by equation (``impl="reference"`` runs it). This module is its fast form, tested
against it in ``tests/test_losses_reference.py``; what each speed-up gained is in ``docs/performance.md``.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from ._autograd import eager_forward, eager_terms
from ._chunks import chunks_in_order, gather_classes, one_hot_chunk, present_chunks, scatter_classes
from . import reference
from ._functional import (
    IMPLEMENTATIONS, REDUCTIONS, autocast_off, check_choice, check_fraction, check_positive, check_window, log_q,
    prepare,
)
from ._stats import BORDERS, LocalStats, center_weight, check_sigma
from .base import SegmentationLoss

TERMS = ("bce", "ssl", "hard_fraction", "norm_pred_min", "norm_pred_max", "norm_gt_min", "norm_gt_max",
         "e_max", "e_mean", "e_median")


def normalized_parts(v: torch.Tensor, stats: LocalStats, c4: float, binary: bool):
    """SSL Eq. 10 (one side) as ``(num, den)``: ``v_nor = num / den = (v - mu + c4) / (std + c4)``, no gradient.

    ``v`` is zero at ignored pixels; ``binary`` (a 0/1 map) uses ``E[v^2] = mu``
    (Eq. 16). The variance is clamped at 0. With ``c4 = 0`` a window of zero
    variance normalizes to 0 (``v = mu`` there). At ignored pixels ``v_nor`` is
    1 (``(0 - 0 + c4) / c4``) whatever the map, so the difference of two
    normalized maps is 0 there.
    """
    with torch.no_grad():
        mu = stats.mean(v)
        # E[v^2] - mu^2 with the square rounded first (not fused): exactly 0 for a one-pixel window.
        var = torch.addcmul(mu, mu, mu, value=-1) if binary else stats.mean(v * v).sub_(mu * mu)
        # The variance is floored at (c4 eps / 4)^2 rather than 0: std + c4 is bitwise unchanged (the floor's
        # root is under half an ulp of c4) and sqrt never sees an exact zero (docs/performance.md).
        floor = (c4 * torch.finfo(v.dtype).eps / 4) ** 2
        den = var.clamp_(min=floor).sqrt_().add_(c4)
        if c4 == 0:
            den.masked_fill_(den == 0, math.inf)
        return torch.sub(v, mu, out=mu).add_(c4), den


def normalized_zero(c4: float) -> float:
    """What :func:`normalized_parts` gives everywhere for a map that is 0 in every window (the one-hot map of a
    class absent from the batch): ``(0 - 0 + c4) / (0 + c4) = 1``, or 0 when ``c4 = 0`` (zero variance)."""
    return 1.0 if c4 > 0 else 0.0


class SSLLoss(SegmentationLoss):
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

    ``border`` (``"renorm"``, ``"zero"``, ``"valid"``) is the convention of the
    image border (:mod:`segrepro.losses._stats`); with ``"valid"`` the entries
    whose window crosses the border have no ``e`` (0) and are never hard.
    ``reduction`` is that of the BCE term, as in :class:`BCELoss` (``"pixel"``,
    the default: summed over the classes, mean over the valid pixels, as
    ``L_ce`` enters Eq. 17; ``"entry"``: mean over the valid entries);
    ``L_ssl`` keeps its ``1 / M``.
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
        impl: str = "fast",
        border: str = "renorm",
        reduction: str = "pixel",
    ):
        super().__init__()
        check_window("region_size", region_size)
        check_choice("impl", impl, IMPLEMENTATIONS)
        check_choice("border", border, BORDERS)
        check_choice("reduction", reduction, REDUCTIONS)
        check_sigma(sigma)
        check_fraction("beta", beta, upper_open=True)
        check_fraction("lam", lam)
        check_positive("c4", c4, zero=True)
        self.region_size = region_size
        self.sigma = sigma
        self.beta = float(beta)
        self.lam = float(lam)
        self.c4 = float(c4)
        self.ohem = bool(ohem)
        self.reweight = bool(reweight)
        self.ignore_index = ignore_index
        self.impl = impl
        self.border = border
        self.reduction = reduction
        w_c = center_weight(region_size, sigma)
        # region_size=1 (w_c = 1): e is 0 everywhere and so is its range.
        self.e_max = 2.0 * (1.0 - w_c) / (math.sqrt(w_c * (1.0 - w_c)) + self.c4) if w_c < 1 else 0.0

    def _parts(self, x, labels, valid, chunk, stats, for_loss=False):
        """``((num_y, den_y), (num_p, den_p))``: ``y_nor`` and ``p_nor`` of Eq. 10 as ``num / den`` for the
        classes of ``chunk`` (channels-last, no gradient; ``labels`` in the chunk's order); both are 1 at
        ignored pixels. For classes absent from the batch the first part is None (``y_nor`` is
        ``normalized_zero(c4)``). ``for_loss``: then also the entries' BCE, ``p = sigmoid(x)`` and the
        one-hot ``y`` (None for absent classes), all 0 at ignored pixels."""
        xc = gather_classes(x, chunk.classes)
        y = one_hot_chunk(labels, valid, chunk.positions, x.dtype, channels_last=True) if chunk.present else None
        mask = stats.mask_like(xc)
        bce = log_q(xc, y).neg_().mul_(mask) if for_loss else None
        p = xc.sigmoid_().mul_(mask)
        p_parts = normalized_parts(p, stats, self.c4, binary=False)
        y_parts = None if y is None else normalized_parts(y, stats, self.c4, binary=True)
        return (y_parts, p_parts, bce, p, y) if for_loss else (y_parts, p_parts)

    def _error(self, y_parts, p_parts, stats) -> torch.Tensor:
        """``e = |y_nor - p_nor|`` (Eq. 10) from the parts of :meth:`_parts`, channels-last; 0 at ignored pixels
        (and, ``border="valid"``, off ``stats.centers``)."""
        num_p, den_p = p_parts
        if y_parts is None:
            e = num_p.div_(den_p).sub_(normalized_zero(self.c4)).abs_()
        else:
            num_y, den_y = y_parts
            e = num_y.div_(den_y).addcdiv_(num_p, den_p, value=-1).abs_()
        return e.mul_(stats.center_mask_like(e)) if self.border == "valid" else e

    def _hard(self, e: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. 11: ``f`` as a boolean map (``valid``, the entries that have an ``e``, broadcasts to ``e``);
        ``e`` is 0 elsewhere, so they are never hard."""
        return e > self.beta * self.e_max if self.ohem else valid.expand_as(e)

    def error_map(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``e [N, C, H, W]`` of Eq. 10, detached; 0 at ignored pixels."""
        with autocast_off(logits.device.type), torch.no_grad():
            x, target, valid = prepare(logits, target, self.ignore_index)
            e = torch.empty_like(x)
            for images, labels, stats, chunk in present_chunks(x, target, valid, self.region_size, self.sigma,
                                                               self.border):
                parts = self._parts(x[images], labels, valid[images], chunk, stats)
                scatter_classes(e[images], chunk.classes, self._error(*parts, stats))
            return e

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            return reference.ssl_loss(logits, target, self.region_size, self.sigma, self.beta, self.lam, self.c4,
                                      self.ohem, self.reweight, self.ignore_index, self.border, self.reduction)
        return eager_forward(self._value_and_grad, logits, target, self.ignore_index)

    @torch.no_grad()
    def _value_and_grad(self, x, target, valid, with_grad: bool):
        """The objective, and how to get its gradient w.r.t. ``x`` (``e`` and ``f`` constants). One pass over
        chunks of classes, present classes first (:func:`present_chunks`: absent ones skip their one-hot
        statistics), sums each entry's BCE, alone and weighted by ``e f`` (``f`` when not reweighting), and
        counts the hard entries ``M``; the objective is ``lam / #valid * sum(bce) + (1 - lam) / M * sum(e f bce)``
        (``#valid`` the valid entries, or the valid pixels with ``reduction="pixel"``).
        Its gradient is ``lam / #valid * d + (1 - lam) / M * e f d`` with ``d = sigmoid(x) - y``: each chunk
        keeps ``d`` and ``e f d`` (channels-last, made while they are in cache) for the backward
        (:meth:`_gradient`), which only has to weigh them once ``M`` is known."""
        sums, chunks, maps = [], [], []
        for images, labels, stats, chunk in present_chunks(x, target, valid, self.region_size, self.sigma,
                                                           self.border):
            chunk_sums, chunk_maps = self._chunk_sums(x[images], labels, valid[images], chunk, stats, with_grad)
            sums.append(chunk_sums)
            if with_grad:
                chunks.append((images, chunk.classes))
                maps.extend(chunk_maps)
        bce, hard_bce, hard = (sum(column) for column in zip(*sums))
        bce_scale = self.lam / (int(valid.sum()) * (x.shape[1] if self.reduction == "entry" else 1))
        hard_scale = (1.0 - self.lam) / max(int(hard), 1)
        value = bce * bce_scale + hard_bce * hard_scale
        return value, (partial(self._gradient, chunks=chunks, bce_scale=bce_scale, hard_scale=hard_scale),
                       (x, *maps))

    def _chunk_sums(self, x, labels, valid, chunk, stats, with_grad):
        """One chunk: ``(sum of BCE, sum of e f BCE, sum of f)`` over its valid entries, and with the gradient
        the maps ``(d, e f d)``, ``d = sigmoid(x) - y`` (0 at ignored pixels; made in the buffers of p and e)."""
        y_parts, p_parts, bce, p, y = self._parts(x, labels, valid, chunk, stats, for_loss=True)
        e = self._error(y_parts, p_parts, stats)
        bce_sum = bce.sum()
        if not self.ohem:  # f is the valid mask (stats.centers; with border="valid" a map of them, in e's buffer)
            weight = e if self.reweight else (e.copy_(stats.center_mask_like(e)) if self.border == "valid" else None)
            hard = stats.centers.sum() * e.shape[1]
        elif self.reweight:  # e f in one step: entries above beta e_max keep e, the rest become 0
            weight = torch.nn.functional.threshold_(e, self.beta * self.e_max, 0.0)
            # M counted as the sum of a float 0/1 map (docs/performance.md): exact up to 2^24 hard entries per
            # chunk, off by less than 1e-7 beyond; the chunks' counts are added as integers.
            hard = torch.gt(weight, 0.0, out=torch.empty_like(weight)).sum().long()
        else:
            weight = e.gt_(self.beta * self.e_max)  # f as a float 0/1 map
            hard = weight.sum().long()
        hard_bce_sum = bce_sum if weight is None else bce.mul_(weight).sum()  # (no weight: f is the mask)
        if not with_grad:
            return (bce_sum, hard_bce_sum, hard), ()
        d = p if y is None else p.sub_(y)
        return (bce_sum, hard_bce_sum, hard), (d, d if weight is None else weight.mul_(d))

    @torch.no_grad()
    def _gradient(self, x, *maps_and_grad_output, chunks, bce_scale, hard_scale):
        """``grad_output (bce_scale d + hard_scale e f d)`` from each chunk's maps ``(d, e f d)``."""
        *maps, grad_output = maps_and_grad_output
        grad = torch.empty_like(x)
        bce_scale, hard_scale = grad_output * bce_scale, grad_output * hard_scale
        for (images, classes), d, weighted in zip(chunks, maps[0::2], maps[1::2]):
            scatter_classes(grad[images], classes, torch.mul(d, bce_scale).addcmul_(weighted, hard_scale))
        return grad

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics to log (SSL Figs. 3-4), each a scalar over the valid (pixel, class) entries.

        ``bce``: the BCE term (in the loss's ``reduction``); ``ssl``: ``L_ssl``
        (Eq. 13); ``hard_fraction``: ``M`` over the number of valid entries
        (Fig. 4); ``norm_pred_min`` / ``norm_pred_max`` and ``norm_gt_min`` /
        ``norm_gt_max``: extremes of ``p_nor`` and ``y_nor`` (Fig. 3); ``e_max``,
        ``e_mean``, ``e_median``: the observed maximum, mean and median of ``e``
        (Fig. 3; the theoretical bound is the attribute ``e_max``); these five
        over the entries that have an ``e`` (with ``border="valid"``, those
        whose window lies inside the image; 0 if none). All 0 when no pixel is valid.
        """
        return eager_terms(self._terms, logits, target, self.ignore_index, TERMS)

    def _terms(self, x, target, valid):
        stats = LocalStats(self.region_size, self.sigma, valid, x.dtype, self.border)
        has_e = bool(stats.centers.any())  # false only with border="valid" and no window inside the images
        sums = {k: x.new_zeros(()) for k in ("bce", "ssl", "hard")}
        extremes, errors = [], []
        for chunk in chunks_in_order(x.shape[1]):
            (num_y, den_y), (num_p, den_p) = self._parts(x, target, valid, chunk, stats)
            y_nor, p_nor = num_y.div_(den_y), num_p.div_(den_p)
            full = valid.unsqueeze(1).expand_as(y_nor)
            scored = stats.centers.unsqueeze(1).expand_as(y_nor)  # the entries that have an e (full unless "valid")
            bce = -log_q(x[:, chunk.positions], one_hot_chunk(target, valid, chunk.positions, x.dtype))
            if has_e:
                extremes.append(torch.stack([v for t in (p_nor, y_nor) for v in t[scored].aminmax()]))
            e = y_nor.sub_(p_nor).abs_()[scored]
            f = self._hard(e, e.new_ones((), dtype=torch.bool))
            hard_bce = bce[scored]
            sums["bce"] += bce[full].sum()
            sums["hard"] += f.sum()
            sums["ssl"] += (hard_bce * e if self.reweight else hard_bce).mul_(f).sum()
            errors.append(e)
        extremes = torch.stack(extremes) if has_e else x.new_zeros(1, 4)
        errors = torch.cat(errors) if has_e else x.new_zeros(1)
        count = int(valid.sum()) * x.shape[1]
        bce_count = count if self.reduction == "entry" else int(valid.sum())
        return (
            sums["bce"] / bce_count, sums["ssl"] / sums["hard"].clamp(min=1), sums["hard"] / count,
            extremes[:, 0].min(), extremes[:, 1].max(), extremes[:, 2].min(), extremes[:, 3].max(),
            errors.max(), errors.mean(), errors.median(),
        )
