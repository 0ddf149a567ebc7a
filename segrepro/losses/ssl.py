"""Structural similarity loss (SSL paper, Section 3, Eqs. 10-17)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._functional import autocast_off, check_window, masked_mean, one_hot, prepare, zero_with_graph
from ._window import LocalStats, center_weight, check_sigma, normalize_
from .bce import bce_map


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

    def _normalized(self, x, target, valid):
        """``(y_nor, p_nor, y)`` of Eq. 10, ``[N, C, H, W]``; both normalized maps are 1 at ignored pixels."""
        y = one_hot(target, valid, x.shape[1], x.dtype)
        with torch.no_grad():
            stats = LocalStats(self.region_size, self.sigma, valid, x.dtype)
            p_nor = normalize_(torch.sigmoid(x).mul_(stats.mask), stats, self.c4, binary=False)
            y_nor = normalize_(y, stats, self.c4, binary=True)
        return y_nor, p_nor, y

    def _error(self, x, target, valid):
        """``(e, y)``: the error map of Eq. 10 (0 at ignored pixels) and the one-hot target."""
        y_nor, p_nor, y = self._normalized(x, target, valid)
        return p_nor.sub_(y_nor).abs_(), y

    def _hard(self, e: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. 11: ``f`` as a boolean map; ``e`` is 0 at ignored pixels, so they are never hard."""
        if self.ohem:
            return e > self.beta * self.e_max
        return valid.unsqueeze(1).expand_as(e)

    def error_map(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``e [N, C, H, W]`` of Eq. 10, detached; 0 at ignored pixels."""
        with autocast_off(logits.device.type), torch.no_grad():
            x, target, valid = prepare(logits, target, self.ignore_index)
            return self._error(x, target, valid)[0]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return zero_with_graph(x)
            with torch.no_grad():
                e, y = self._error(x, target, valid)
                f = self._hard(e, valid)
                # One weight map for both terms: lam / #valid entries on BCE, (1 - lam) / M on e * f.
                weight = e.mul_(f) if self.reweight else f.to(x.dtype)
                weight.mul_((1.0 - self.lam) / f.sum().to(x.dtype).clamp(min=1))
                weight.add_(valid.unsqueeze(1), alpha=self.lam / (float(valid.sum()) * x.shape[1]))
            return F.binary_cross_entropy_with_logits(x, y, weight=weight, reduction="sum")

    @torch.no_grad()
    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics to log (SSL Figs. 3-4), each a scalar over the valid (pixel, class) entries.

        ``bce``: the BCE term; ``ssl``: ``L_ssl`` (Eq. 13); ``hard_fraction``:
        ``M`` over the number of valid entries (Fig. 4); ``norm_pred_min`` /
        ``norm_pred_max`` and ``norm_gt_min`` / ``norm_gt_max``: extremes of
        ``p_nor`` and ``y_nor`` (Fig. 3); ``e_max``, ``e_mean``, ``e_median``:
        the observed maximum, mean and median of ``e`` (Fig. 3; the
        theoretical bound is the attribute ``e_max``). All 0 when no pixel is valid.
        """
        keys = ("bce", "ssl", "hard_fraction", "norm_pred_min", "norm_pred_max", "norm_gt_min", "norm_gt_max",
                "e_max", "e_mean", "e_median")
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return {k: x.new_zeros(()) for k in keys}
            y_nor, p_nor, y = self._normalized(x, target, valid)
            bce = bce_map(x, target, valid)
            full = valid.unsqueeze(1).expand_as(x)
            p_valid, y_valid = p_nor[full], y_nor[full]
            e = p_nor.sub_(y_nor).abs_()
            f = self._hard(e, valid)
            m = f.sum().to(x.dtype)
            weighted = bce * f
            if self.reweight:
                weighted *= e
            e_valid = e[full]
            return dict(zip(keys, (
                masked_mean(bce, full),
                weighted.sum() / m.clamp(min=1),
                m / full.sum().to(x.dtype),
                p_valid.min(), p_valid.max(), y_valid.min(), y_valid.max(),
                e_valid.max(), e_valid.mean(), e_valid.median(),
            )))
