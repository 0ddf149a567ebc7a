"""Locally adaptive loss, LAD (LAD paper, Section 3, Eqs. 2-5).

To read this loss against the paper, start with :func:`segrepro.losses.reference.lad_loss`: the same loss in
plain autograd, equation by equation (``impl="reference"`` runs it). This module is its fast form, tested
against it in ``tests/test_losses_reference.py``; what each speed-up gained is in ``docs/performance.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._chunks import image_groups
from . import reference
from ._functional import IMPLEMENTATIONS, autocast_off, check_choice, prepare, zero_with_graph
from .base import SegmentationLoss


class _Standardize(torch.autograd.Function):
    """Standard score of each pixel's logit vector over the class axis (LAD Sec. 3.1):
    ``x = (x_hat - mean_c) / (std_c + eps)`` with the population std.

    The backward is written out, ``(g - mean_c g) / (std + eps) - x * mean_c(g x) / std``,
    so that it holds one full-size temporary instead of autograd's chain of them;
    where ``std = 0`` (all logits of a pixel equal, e.g. a zero-initialised head)
    the std gets a zero subgradient instead of ``sqrt``'s infinite one.
    """

    @staticmethod
    def forward(ctx, logits, eps):
        xc = logits - logits.mean(dim=1, keepdim=True)
        std = xc.square().mean(dim=1, keepdim=True).sqrt()
        x = xc.div_(std + eps)
        ctx.save_for_backward(x, std)
        ctx.eps = eps
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, std = ctx.saved_tensors
        coef = torch.where(std > 0, (grad * x).mean(dim=1, keepdim=True) / std, 0.0)
        grad_logits = grad - grad.mean(dim=1, keepdim=True)
        return grad_logits.div_(std + ctx.eps).addcmul_(x, coef, value=-1.0), None


def standardize(logits: torch.Tensor, eps: float = reference.LAD_EPS) -> torch.Tensor:
    """``(x_hat - mean_c) / (std_c + eps)`` over the class axis, population std (LAD Sec. 3.1)."""
    return _Standardize.apply(logits, eps)


def _span(length: int, stride: int, offset: int):
    """Centers ``a`` of the strided grid (``ceil(length / stride)`` of them) whose neighbour
    ``stride * a + offset`` is inside ``[0, length)``: ``(center slice, neighbour slice)``,
    or ``None`` when there is none."""
    n = (length - 1) // stride + 1
    a0 = max(0, -(offset // stride))  # ceil(-offset / stride)
    a1 = min(n, (length - 1 - offset) // stride + 1)
    if a1 <= a0:
        return None
    return slice(a0, a1), slice(stride * a0 + offset, stride * (a1 - 1) + offset + 1, stride)


def _label_maps(target: torch.Tensor, valid: torch.Tensor, stride: int):
    """int32 labels of the strided centers (-1 where ignored) and of all pixels as neighbours
    (-2 where ignored): one equality test then gives ``mu``, false at ignored pixels."""
    labels = target.to(torch.int32)
    return torch.where(valid, labels, -1)[:, ::stride, ::stride], torch.where(valid, labels, -2)


def _window(centers: torch.Tensor, neighbours: torch.Tensor, kernel_size: int, stride: int, dtype):
    """Per window offset, ring by ring from the center outwards: ``(w, center index,
    neighbour index, mu)`` with ``w = 2^(1 - D8)`` and ``mu [N, 1, h, w]`` (``dtype``) one
    where the neighbour carries the (valid) center's label, else zero (LAD Eq. 2).

    The center offset comes first and covers every center; offsets whose
    neighbours all fall outside the image are skipped. ``mu`` is a view of one
    buffer, overwritten by the next offset.
    """
    height, width = neighbours.shape[1:]
    buffer = torch.empty((centers.shape[0], 1) + centers.shape[1:], dtype=dtype, device=centers.device)
    r = kernel_size // 2
    offsets = sorted(((di, dj) for di in range(-r, r + 1) for dj in range(-r, r + 1)),
                     key=lambda d: max(abs(d[0]), abs(d[1])))
    for di, dj in offsets:
        rows, cols = _span(height, stride, di), _span(width, stride, dj)
        if rows is None or cols is None:
            continue
        (ca, na), (cb, nb) = rows, cols
        mu = buffer[:, :, : ca.stop - ca.start, : cb.stop - cb.start]
        torch.eq(centers[:, None, ca, cb], neighbours[:, None, na, nb], out=mu)
        yield 2.0 ** (1 - max(abs(di), abs(dj))), (ca, cb), (na, nb), mu


class _SelectivePool(torch.autograd.Function):
    """``f(p) = (1/xi) * sum_q mu(q) w(q) x(q)`` at the strided centers (LAD Eq. 2).

    Linear in ``x``: the backward scatters ``grad / xi`` back through the same
    masks. Each window offset is one shifted multiply-add over the logits; one
    accumulator the size of the output and one ``[N, 1, h, w]`` mask at a time,
    so memory does not grow with ``kernel_size^2``. The images are pooled one
    after the other or all at once (:func:`image_groups`: per image on CPU by default).
    """

    @staticmethod
    def forward(ctx, x, centers, neighbours, kernel_size, stride):
        out = x.new_empty(x.shape[:2] + centers.shape[1:])
        inv_xi = x.new_empty((x.shape[0], 1) + centers.shape[1:])
        for n in image_groups(x):
            offsets = _window(centers[n], neighbours[n], kernel_size, stride, x.dtype)
            w, _, (na, nb), mu = next(offsets)  # the center itself
            xi = inv_xi[n].copy_(mu)
            pooled = torch.mul(x[n, :, na, nb], w * mu, out=out[n])
            for w, (ca, cb), (na, nb), mu in offsets:
                xi[:, :, ca, cb] += mu
                pooled[:, :, ca, cb].addcmul_(x[n, :, na, nb], mu, value=w)
            xi.clamp_(min=1.0).reciprocal_()  # xi = 0 only at ignored centers: f = 0 there
            pooled.mul_(xi)
        ctx.save_for_backward(centers, neighbours, inv_xi)
        ctx.shape, ctx.kernel_size, ctx.stride = x.shape, kernel_size, stride
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        centers, neighbours, inv_xi = ctx.saved_tensors
        grad_x = grad.new_zeros(ctx.shape)
        for n in image_groups(grad):
            for w, (ca, cb), (na, nb), mu in _window(centers[n], neighbours[n], ctx.kernel_size, ctx.stride,
                                                     grad.dtype):
                grad_x[n, :, na, nb].addcmul_(grad[n, :, ca, cb], mu.mul_(inv_xi[n, :, ca, cb]), value=w)
        return grad_x, None, None, None, None


class LADLoss(SegmentationLoss):
    """Locally adaptive loss (LAD paper, Section 3).

    Standardized logits (Sec. 3.1) are pooled over the same-label pixels of a
    ``kernel_size x kernel_size`` window around each valid center with weights
    ``2^(1 - D8)`` and divided by the same-label count ``xi`` (Eq. 2); the
    local loss is the softmax cross entropy of the pooled vector (Eqs. 3-4);
    the local losses of the valid centers (every ``stride``-th row and column,
    starting at 0) are Minkowski pooled, ``(mean L_S^k)^(1/k)`` (Eq. 5): over
    each image, then averaged over the images that have a valid center
    (``pool="image"``, "here we take one image as an input batch"), or over
    the valid centers of the whole batch (``pool="batch"``).
    """

    def __init__(self, kernel_size: int = 5, k: float = 3.0, stride: int = 1, ignore_index: int = 255,
                 impl: str = "fast", pool: str = "image"):
        super().__init__()
        reference.check_lad(kernel_size, k, stride, pool)
        check_choice("impl", impl, IMPLEMENTATIONS)
        self.kernel_size = kernel_size
        self.k = k
        self.stride = stride
        self.ignore_index = ignore_index
        self.impl = impl
        self.pool = pool

    def _strided_local(self, logits: torch.Tensor, target: torch.Tensor):
        """``L_S`` and the valid mask on the strided center grid (Eqs. 2-4)."""
        x, target, valid = prepare(logits, target, self.ignore_index)
        s = self.stride
        centers, neighbours = _label_maps(target, valid, s)
        f = _SelectivePool.apply(standardize(x), centers, neighbours, self.kernel_size, s)
        local = F.cross_entropy(f, target[:, ::s, ::s], ignore_index=self.ignore_index, reduction="none")
        return local, valid[:, ::s, ::s], x

    def _minkowski(self, local: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Minkowski pooling of the valid local losses, ``(mean L_S^k)^(1/k)`` (Eq. 5), over the whole batch or
        per image (then the mean over the images with a valid center). ``local`` is 0 at ignored centers (and
        the cross entropy sends them no gradient), so the sums run over all centers without indexing by
        ``valid`` (docs/performance.md)."""
        if self.pool == "batch":
            return local.pow(self.k).sum().div(valid.sum()).pow(1.0 / self.k)
        counts = valid.sum((1, 2))
        scored = counts > 0
        return local.pow(self.k).sum((1, 2))[scored].div(counts[scored]).pow(1.0 / self.k).mean()

    def local_losses(self, logits: torch.Tensor, target: torch.Tensor):
        """``(L_S [N, H, W], valid [N, H, W] bool)``; off the stride grid ``L_S = 0`` and ``valid`` is false."""
        with autocast_off(logits.device.type):
            local, valid, _ = self._strided_local(logits, target)
            s = self.stride
            if s == 1:
                return local, valid
            full = local.new_zeros(target.shape)
            full[:, ::s, ::s] = local
            full_valid = torch.zeros(target.shape, dtype=torch.bool, device=target.device)
            full_valid[:, ::s, ::s] = valid
            return full, full_valid

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            return reference.lad_loss(logits, target, self.kernel_size, self.k, self.stride, self.ignore_index,
                                      self.pool)
        with autocast_off(logits.device.type):
            local, valid, x = self._strided_local(logits, target)
            if not bool(valid.any()):
                return zero_with_graph(x)
            return self._minkowski(local, valid)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict:
        """``lad`` (the loss) and the mean and max of the local losses ``L_S`` over the valid centers."""
        with autocast_off(logits.device.type):
            local, valid, x = self._strided_local(logits, target)
            if not bool(valid.any()):
                zero = zero_with_graph(x)
                return {"lad": zero, "local_mean": zero, "local_max": zero}
            valid_local = local[valid]
            return {
                "lad": self._minkowski(local, valid),
                "local_mean": valid_local.mean(),
                "local_max": valid_local.max(),
            }
