"""Affinity field loss (Ke et al., ECCV 2018, "Adaptive Affinity Fields"), non-adaptive form (SSL Table 5).

To read this loss against the paper, start with :func:`segrepro.losses.reference.affinity_field_loss`: the same loss in
plain autograd, equation by equation (``impl="reference"`` runs it). This module is its fast form, tested
against it in ``tests/test_losses_reference.py``; what each speed-up gained is in ``docs/performance.md``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ._autograd import Precomputed, eager_forward, eager_terms
from ._chunks import chunks_in_order, gather_classes, image_groups
from . import reference
from ._functional import IMPLEMENTATIONS, check_choice, check_fraction, check_window
from ._stats import repeat_channels
from .base import SegmentationLoss

EPS = reference.AFFINITY_EPS  # clipping of p and 1 - p, as in the official implementation


def _span(d: int, n: int):
    """``(center slice, neighbour slice)`` along one axis for the offset ``d`` (neighbour = center + d, both inside)."""
    lo = max(0, -d)
    hi = max(lo, min(n, n - d))
    return slice(lo, hi), slice(lo + d, hi + d)


def _pair_indices(maps: torch.Tensor, offsets: list):
    """``(n, center row, center col, neighbour row, neighbour col)`` of the true entries of ``maps``
    ``[len(offsets), N, H, W]`` (one boolean map of centers per offset)."""
    k, n, i, j = maps.nonzero(as_tuple=True)
    shift = torch.tensor(offsets, device=maps.device)[k]
    return n, i, j, i + shift[:, 0], j + shift[:, 1]


def _flat_pairs(pairs: tuple, images: slice, shape) -> tuple:
    """The pairs (:func:`_pair_indices`) of the images ``images`` of a ``[N, H, W]`` batch, as flat indices
    ``(centers, neighbours)`` into those images' pixels."""
    num_images, h, w = shape
    start, stop, _ = images.indices(num_images)
    n, ci, cj, ni, nj = pairs
    inside = (n >= start) & (n < stop)
    n = n[inside] - start
    return (n * h + ci[inside]) * w + cj[inside], (n * h + ni[inside]) * w + nj[inside]


def _pair_kl(center: torch.Tensor, neighbour: torch.Tensor, with_grad: bool):
    """``KL(neighbour || center)`` of two-outcome variables given as 1-D probabilities, with ``p`` and
    ``1 - p`` each clipped to ``[EPS, 1]``; with its derivatives w.r.t. ``center`` and ``neighbour``
    (``None`` unless ``with_grad``)."""
    big_pc, big_pn = center.clamp(EPS, 1.0), neighbour.clamp(EPS, 1.0)
    big_qc, big_qn = torch.rsub(center, 1.0).clamp_(EPS, 1.0), torch.rsub(neighbour, 1.0).clamp_(EPS, 1.0)
    log_ratio_p, log_ratio_q = big_pn.log() - big_pc.log(), big_qn.log() - big_qc.log()
    kl = big_pn * log_ratio_p + big_qn * log_ratio_q
    if not with_grad:
        return kl, None, None
    d_neighbour = (log_ratio_p + 1.0) * (neighbour >= EPS) - (log_ratio_q + 1.0) * (neighbour <= 1.0 - EPS)
    d_center = (big_qn / big_qc) * (center <= 1.0 - EPS) - (big_pn / big_pc) * (center >= EPS)
    return kl, d_center, d_neighbour


class AffinityFieldLoss(SegmentationLoss):
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

    ``official_pairs`` (the default) also drops a pair when the pixel on the
    opposite side of the center (center - offset) is ignored or outside the
    image, as the official code's ``ignores_from_label`` does (its ignore map is
    padded with "ignored").

    The sum of ``KL`` over all entries is computed densely with one dilated
    3x3 ring convolution (no shifted copies of the maps); the edge entries,
    which lie on label boundaries only, are gathered sparsely and subtracted,
    and so are, from the ring sums, the few pairs that ``official_pairs`` drops.
    """

    def __init__(self, kernel_size: int = 3, margin: float = 3.0, lam_edge: float = 1.0, lam_nonedge: float = 1.0,
                 decay: bool = True, ignore_index: int = 255, impl: str = "fast", official_pairs: bool = True):
        super().__init__()
        check_window("kernel_size", kernel_size)
        check_choice("impl", impl, IMPLEMENTATIONS)
        self.kernel_size = kernel_size
        self.margin = float(margin)
        self.lam_edge = float(lam_edge)
        self.lam_nonedge = float(lam_nonedge)
        self.decay = bool(decay)
        self.ignore_index = ignore_index
        self.impl = impl
        self.official_pairs = bool(official_pairs)
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        """Fraction of training done, in ``[0, 1]``; sets ``dec = 10^(-fraction)`` when ``decay``."""
        check_fraction("progress", fraction)
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

    def _kept_ring(self, v: torch.Tensor, dropped: tuple, transpose: bool = False) -> torch.Tensor:
        """:meth:`_ring` without the ``dropped`` pairs (:func:`_flat_pairs` of ``v``'s images): the sum over the
        neighbours paired with each center, less each dropped pair's neighbour at its center; ``transpose``:
        less its center at its neighbour (the sum over the centers paired with each neighbour). Channels-last,
        so that a pixel's channels are one row of the flat view."""
        k = v.shape[1]
        out = self._ring(v).contiguous(memory_format=torch.channels_last)
        centers, neighbours = dropped
        source, destination = (centers, neighbours) if transpose else (neighbours, centers)
        rows = v.permute(0, 2, 3, 1).reshape(-1, k).index_select(0, source).neg_()
        out.permute(0, 2, 3, 1).view(-1, k).index_put_((destination,), rows, accumulate=True)
        return out

    def _pairs(self, target: torch.Tensor, valid: torch.Tensor, offsets: list):
        """``(edges, dropped)``, index tensors (:func:`_pair_indices`) over the 8 directions (looped, one boolean
        map each): the valid pairs with different labels, and with ``official_pairs`` (else None) the valid
        pairs whose opposite pixel (center - offset) is ignored or outside, which the official rule drops too
        (and which are then left out of the edges)."""
        h, w = target.shape[1:]
        differ = torch.zeros((len(offsets),) + tuple(target.shape), dtype=torch.bool, device=target.device)
        dropped = torch.zeros_like(differ) if self.official_pairs else None
        if dropped is not None:  # the valid map padded with "ignored", as the official ignore map is
            s = self.kernel_size // 2
            padded = F.pad(valid, (s, s, s, s), value=False)
        for k, (dy, dx) in enumerate(offsets):
            (cy, ny), (cx, nx) = _span(dy, h), _span(dx, w)
            pair = valid[:, cy, cx] & valid[:, ny, nx]
            if dropped is not None:  # the pixels opposite the neighbours, center - (dy, dx)
                opposite = padded[:, s - dy + cy.start: s - dy + cy.stop, s - dx + cx.start: s - dx + cx.stop]
                dropped[k, :, cy, cx] = pair & ~opposite
                pair &= opposite
            differ[k, :, cy, cx] = pair & (target[:, cy, cx] != target[:, ny, nx])
        return _pair_indices(differ, offsets), None if dropped is None else _pair_indices(dropped, offsets)

    @torch.no_grad()
    def _compute(self, x, target, valid, with_grad: bool):
        """``(ce, edge, non_edge, d objective / d x or None)``.

        The sum of ``KL`` over all entries is computed densely, per chunk of
        classes, with dilated 3x3 ring convolutions (``R(v)_i = sum_d v_(i+d)``):
        ``sum_(i,d,c) KL = sum_(j,c) H_jc n_j - sum_(i,c) v_i (log P_ic R(vP)_ic + log Q_ic R(vQ)_ic)``
        with ``H = P log P + Q log Q``, ``v`` the valid mask and ``n = v R(v)`` the
        number of valid pairs in which a pixel is the neighbour (or the center).
        With ``official_pairs`` the pairs the official rule drops on top (few: beside
        ignored pixels and along the image border) are taken out of ``R``, of its
        transpose and of ``n`` (:meth:`_kept_ring`). The edge entries, on label
        boundaries only, are gathered sparsely; their ``KL`` is subtracted from the
        dense sum to give the non-edge sum.
        """
        n_valid, num_classes = int(valid.sum()), x.shape[1]
        mask = valid.unsqueeze(1).to(x.dtype)
        label = torch.where(valid, target, 0).unsqueeze(1)
        p = F.log_softmax(x, dim=1)
        ce = -(p.gather(1, label) * mask).sum() / n_valid
        p.exp_()
        grad = torch.empty_like(x) if with_grad else None
        edge = non_edge = x.new_zeros(())
        if self.kernel_size == 1:  # s = 0: the only offset is the center itself, so there is no pair
            if with_grad:
                grad.zero_()
        else:
            (n, ci, cj, ni, nj), dropped = self._pairs(target, valid, reference.affinity_offsets(self.kernel_size))
            # n: the pairs with each pixel as neighbour (official_pairs: less the dropped ones)
            pairs = (self._ring(mask) if dropped is None else self._kept_ring(
                mask, _flat_pairs(dropped, slice(None), target.shape), transpose=True)).mul_(mask)
            cls = torch.cat([target[n, ci, cj], target[n, ni, nj]])  # the two classes of each differing pair
            n, ci, cj, ni, nj = (t.repeat(2) for t in (n, ci, cj, ni, nj))
            n_edge = len(cls)
            n_non_edge = int(pairs.sum()) * num_classes - n_edge
            # (An empty set of non-edge entries: the dense sum is all edges, and both are left out.)
            non_edge_scale = self.dec * self.lam_nonedge / n_non_edge if n_non_edge else 0.0
            total = self._dense_sum(p, mask, pairs, non_edge_scale, grad, dropped)
            kl, d_center, d_neighbour = _pair_kl(p[n, cls, ci, cj], p[n, cls, ni, nj], with_grad)
            edge = (self.margin - kl).clamp_(min=0).sum() / max(n_edge, 1)
            if n_non_edge:  # accumulated in float64: the edge entries are a large part of the dense sum
                non_edge = ((total - kl.sum(dtype=torch.float64)) / n_non_edge).to(x.dtype)
            if with_grad:
                # d objective / d KL of an edge entry: the hinge, minus its share in the dense non-edge sum.
                g = (kl <= self.margin).to(x.dtype).mul_(-self.dec * self.lam_edge / max(n_edge, 1))
                g.sub_(non_edge_scale)
                grad.index_put_((n, cls, ci, cj), g * d_center, accumulate=True)
                grad.index_put_((n, cls, ni, nj), g * d_neighbour, accumulate=True)
                # Through the softmax: dx = p (dp - sum_c p dp).
                grad.sub_((grad * p).sum(1, keepdim=True)).mul_(p)
        if with_grad:
            # Cross entropy: (p - y) v / #valid.
            grad.addcmul_(p, mask, value=1.0 / n_valid).scatter_add_(1, label, mask.mul(-1.0 / n_valid))
        return ce, edge, non_edge, grad

    def _dense_sum(self, p, mask, pairs, scale, grad, dropped):
        """Dense ``sum KL`` over all entries (float64), one chunk of classes at a time for each group of
        images (:func:`image_groups`); writes ``scale * d sum / d p`` into ``grad`` unless it is None. The
        one-channel ``mask`` and ``pairs`` are repeated over a chunk's channels (:func:`repeat_channels`).
        ``dropped``: None (every valid pair: the ring convolution, its own transpose) or the pairs the
        official rule drops on top (:meth:`_kept_ring`)."""
        total = 0.0
        for images in image_groups(p):
            ring = ring_t = self._ring
            if dropped is not None:
                group = _flat_pairs(dropped, images, mask.shape[:1] + mask.shape[2:])
                ring = partial(self._kept_ring, dropped=group)
                ring_t = partial(self._kept_ring, dropped=group, transpose=True)
            repeated = {}
            for chunk in chunks_in_order(p.shape[1]):
                k = len(chunk.classes)
                if k not in repeated:
                    repeated[k] = repeat_channels(mask[images], k), repeat_channels(pairs[images], k)
                total += self._dense_chunk(p[images], chunk.classes, *repeated[k], scale,
                                           None if grad is None else grad[images, chunk.positions], ring, ring_t)
        return total

    def _dense_chunk(self, p, classes, mask, pairs, scale, grad, ring, ring_t):
        """Dense ``sum KL`` over all entries of one chunk of classes (channels-last; ``mask`` and ``pairs`` in
        the chunk's shape), as a float64 scalar; writes ``scale * d sum / d p`` into ``grad`` (a view) unless
        it is None. ``ring(v)_i`` sums ``v`` over the neighbours paired with center ``i``, ``ring_t`` is its
        transpose (over the centers paired with neighbour ``i``)."""
        # In-place steps, and P and Q clipped again for the gradient rather than kept, hold at most 7 chunk-sized
        # maps at once.
        big_p = gather_classes(p, classes)
        big_q = torch.rsub(big_p, 1.0).clamp_(EPS, 1.0)
        big_p.clamp_(EPS, 1.0)
        log_p, log_q = big_p.log(), big_q.log()
        dense = (big_p * log_p).addcmul_(big_q, log_q).mul_(pairs)
        ring_p, ring_q = ring(big_p.mul_(mask)), ring(big_q.mul_(mask))
        del big_p, big_q
        # The two parts are large and of opposite signs: their difference is taken per entry, where it is
        # small, and summed in float64 (a float64 sum copies its input, once here).
        total = dense.sub_((log_p * ring_p).addcmul_(log_q, ring_q).mul_(mask)).sum(dtype=torch.float64)
        del dense
        if grad is None:
            return total
        # d / dP = n (log P + 1) - v R(vP) / P - v R(v log P), likewise for Q (n is 0 wherever v is, so
        # log P may be masked first); then through the clipping (derivative 0 where it is active), as a product
        # with a 0/1 map.
        pc = gather_classes(p, classes)
        d_p = self._grad_part(pc.clamp(EPS, 1.0), log_p, ring_p, mask, pairs, ring_t)
        d_p.mul_(torch.ge(pc, EPS, out=torch.empty_like(pc)))
        del log_p, ring_p
        big_q = torch.rsub(pc, 1.0).clamp_(EPS, 1.0)
        d_q = self._grad_part(big_q, log_q, ring_q, mask, pairs, ring_t)
        d_q.mul_(torch.le(pc, 1.0 - EPS, out=big_q))
        del big_q, log_q, ring_q, pc
        grad.copy_(d_p.sub_(d_q).mul_(mask).mul_(scale))
        return total

    def _grad_part(self, big, log, ring, mask, pairs, ring_t):
        """``n (log B + 1) - v R(vB) / B - v R^T(v log B)`` for ``B`` = P or Q (``ring = R(vB)``, ``ring_t`` the
        transposed ring ``R^T``), overwriting ``log`` and ``ring``."""
        ring.div_(big)
        log.mul_(mask)
        ring_log = ring_t(log)
        return log.add_(1.0).mul_(pairs).sub_(ring).sub_(ring_log)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            return reference.affinity_field_loss(logits, target, self.kernel_size, self.margin, self.lam_edge,
                                                 self.lam_nonedge, self.progress, self.decay, self.ignore_index,
                                                 self.official_pairs)
        return eager_forward(self._value_and_grad, logits, target, self.ignore_index)

    def _value_and_grad(self, x, target, valid, with_grad: bool):
        ce, edge, non_edge, grad = self._compute(x, target, valid, with_grad)
        backward = Precomputed(grad, lambda *inputs: self._compute(*inputs, with_grad=True)[3])
        return ce + self.dec * (self.lam_edge * edge + self.lam_nonedge * non_edge), (backward, (x, target, valid))

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ce", "edge", "non_edge"}``: the plain means, before ``lam_*`` and the decay factor
        (0 when no pixel is valid)."""
        return eager_terms(lambda x, t, v: self._compute(x, t, v, with_grad=False)[:3], logits, target,
                           self.ignore_index, ("ce", "edge", "non_edge"))
