"""Affinity field loss (Ke et al., ECCV 2018, "Adaptive Affinity Fields"), non-adaptive form (SSL Table 5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._functional import autocast_off, check_window, prepare, zero_with_graph

EPS = 1e-4  # clipping of p and 1 - p, as in the official implementation


def _span(d: int, n: int):
    """``(center slice, neighbour slice)`` along one axis for the offset ``d`` (neighbour = center + d, both inside)."""
    lo = max(0, -d)
    hi = max(lo, min(n, n - d))
    return slice(lo, hi), slice(lo + d, hi + d)


def _clipped(p: torch.Tensor):
    """``(P, Q)``: ``p`` and ``1 - p`` (of the unclipped ``p``) each clipped to ``[EPS, 1]``."""
    return p.clamp(EPS, 1.0), (1.0 - p).clamp(EPS, 1.0)


class AffinityFieldLoss(nn.Module):
    """``CE + dec * (lam_edge * edge + lam_nonedge * non_edge)``.

    ``p = softmax(logits)``; each pixel is paired with its 8 neighbours at the
    offsets ``{-s, 0, s}^2`` minus the center, ``s = kernel_size // 2``. For
    every (pixel, class, direction) with the center and the neighbour both
    inside the image and not ignored, ``KL = P_n log(P_n / P_c) + Q_n log(Q_n / Q_c)``
    (neighbour ``n`` against center ``c``, ``P`` = ``p`` and ``Q`` = ``1 - p``
    each clipped to ``[1e-4, 1]``). The entry is an edge when the one-hot
    targets of center and neighbour differ in that class. ``edge`` is the mean
    of ``max(0, margin - KL)`` over edge entries, ``non_edge`` the mean of
    ``KL`` over non-edge entries (0 for an empty set), ``dec = 10^(-progress)``
    when ``decay`` (``set_progress``), else 1.

    The sum of ``KL`` over all entries is computed densely with one dilated
    3x3 ring convolution (no shifted copies of the maps); the edge entries,
    which lie on label boundaries only, are gathered sparsely and subtracted.
    """

    def __init__(self, kernel_size: int = 3, margin: float = 3.0, lam_edge: float = 1.0, lam_nonedge: float = 1.0,
                 decay: bool = True, ignore_index: int = 255):
        super().__init__()
        check_window("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.margin = float(margin)
        self.lam_edge = float(lam_edge)
        self.lam_nonedge = float(lam_nonedge)
        self.decay = bool(decay)
        self.ignore_index = ignore_index
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        """Fraction of training done, in ``[0, 1]``; sets ``dec = 10^(-fraction)`` when ``decay``."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be in [0, 1], got {fraction!r}")
        self.progress = float(fraction)

    @property
    def dec(self) -> float:
        return 10.0 ** (-self.progress) if self.decay else 1.0

    def _ring(self, v: torch.Tensor) -> torch.Tensor:
        """Sum of the 8 neighbours of every pixel (zero outside the image)."""
        s, k = self.kernel_size // 2, v.shape[1]
        weight = torch.ones(3, 3, dtype=v.dtype, device=v.device)
        weight[1, 1] = 0
        return F.conv2d(v, weight.expand(k, 1, 3, 3), padding=s, dilation=s, groups=k)

    def _edges(self, target: torch.Tensor, valid: torch.Tensor):
        """Index tensors ``(n, center row, center col, neighbour row, neighbour col)`` of the valid pairs with
        different labels, over the 8 directions (looped, one boolean map each)."""
        s = self.kernel_size // 2
        offsets = [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)]
        h, w = target.shape[1:]
        differ = torch.zeros((len(offsets),) + tuple(target.shape), dtype=torch.bool, device=target.device)
        for k, (dy, dx) in enumerate(offsets):
            (cy, ny), (cx, nx) = _span(dy, h), _span(dx, w)
            differ[k, :, cy, cx] = valid[:, cy, cx] & valid[:, ny, nx] & (target[:, cy, cx] != target[:, ny, nx])
        k, n, i, j = differ.nonzero(as_tuple=True)
        shift = torch.tensor(offsets, device=target.device)[k]
        return n, i, j, i + shift[:, 0], j + shift[:, 1]

    def _means(self, x, target, valid):
        """``(ce, edge, non_edge)``: the three plain means."""
        logp = F.log_softmax(x, dim=1)
        ce = F.nll_loss(logp, target, ignore_index=self.ignore_index)
        if self.kernel_size == 1:  # s = 0: the only offset is the center itself, so there is no pair
            return ce, x.new_zeros(()), x.new_zeros(())
        p = logp.exp()
        big_p, big_q = _clipped(p)
        log_p, log_q = big_p.log(), big_q.log()
        vf = valid.unsqueeze(1).to(x.dtype)
        pairs = vf * self._ring(vf)  # per pixel: number of valid neighbours (= valid centers it is a neighbour of)
        # Sum of KL over all entries: sum_n H_n * #centers(n) - sum_c (log P_c ring(vf P) + log Q_c ring(vf Q)) vf_c.
        total = ((big_p * log_p + big_q * log_q) * pairs).sum()
        total = total - ((log_p * self._ring(big_p * vf) + log_q * self._ring(big_q * vf)) * vf).sum()
        # Edge entries: the classes of both ends of each differing pair.
        n, ci, cj, ni, nj = self._edges(target, valid)
        a, b = target[n, ci, cj], target[n, ni, nj]
        cls = torch.cat([a, b])
        n2, m = torch.cat([n, n, n, n]), len(cls)
        pe = p[n2, torch.cat([cls, cls]), torch.cat([ci, ci, ni, ni]), torch.cat([cj, cj, nj, nj])]
        (pc_p, pn_p), (pc_q, pn_q) = (t.split(m) for t in _clipped(pe))
        kl = pn_p * (pn_p.log() - pc_p.log()) + pn_q * (pn_q.log() - pc_q.log())
        n_non_edge = pairs.sum() * x.shape[1] - m
        edge = (self.margin - kl).clamp(min=0).sum() / max(m, 1)
        non_edge = (total - kl.sum()) / n_non_edge.clamp(min=1)
        return ce, edge, non_edge

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return zero_with_graph(x)
            ce, edge, non_edge = self._means(x, target, valid)
            return ce + self.dec * (self.lam_edge * edge + self.lam_nonedge * non_edge)

    @torch.no_grad()
    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ce", "edge", "non_edge"}``: the plain means, before ``lam_*`` and the decay factor (0 if no valid pixel)."""
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return {k: x.new_zeros(()) for k in ("ce", "edge", "non_edge")}
            return dict(zip(("ce", "edge", "non_edge"), self._means(x, target, valid)))
