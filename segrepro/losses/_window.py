"""Weighted local statistics over a square window (SSL Sec. 3.3, Eqs. 14-15).

The window is a ``size x size`` circular-symmetric Gaussian of standard
deviation ``sigma`` normalized to unit sum (``sigma=None``: uniform). The
statistics of a pixel are taken over the in-image, non-ignored pixels of its
window only, with the window weights renormalized to sum to one over those
pixels: ``mean(v)_i = sum_j w_(j-i) m_j v_j / sum_j w_(j-i) m_j`` with ``m``
the valid mask. Both sums are depthwise convolutions with zero padding; the
denominator does not depend on the class, so it is computed once per number of
channels (:class:`LocalStats`).

Also the machinery shared by the losses that compute their gradient together
with their value (SSL, SSIM, affinity field): chunks of classes, channels-last
copies for the convolutions, and a forward that attaches the gradient.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._functional import autocast_off, prepare, zero_with_graph

# Classes processed at once by the chunked losses: bounds their temporaries to a fraction of the logits
# and keeps them in cache; 8 channels in channels-last layout also suit the vectorized depthwise convolution.
CLASS_CHUNK = 8
# Windows at least this wide are summed in two 1-D passes (rows, then columns); smaller ones in one 2-D
# pass, which is faster for them (measured on CPU: one 3x3 pass beats two 1x3 passes, 11x11 is 2-3x slower).
SEPARABLE_FROM = 7


def check_sigma(sigma) -> None:
    """``sigma`` is ``None`` (uniform window) or a positive number."""
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0):
        raise ValueError(f"sigma must be a positive number or None (uniform window), got {sigma!r}")


def window_1d(size: int, sigma) -> torch.Tensor:
    """The normalized 1-D factor of the window (float64): ``exp(-i^2 / (2 sigma^2))`` or uniform. The
    ``size x size`` window is its outer product with itself (the circular Gaussian is separable)."""
    if sigma is None:
        g = torch.ones(size, dtype=torch.float64)
    else:
        i = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-(i * i) / (2.0 * float(sigma) ** 2))
    return g / g.sum()


def center_weight(size: int, sigma) -> float:
    """Weight ``w_c`` of the center of the full, normalized window."""
    return float(window_1d(size, sigma)[size // 2]) ** 2


class LocalStats:
    """Renormalized local means over the valid pixels of each window.

    ``valid`` is the ``[N, H, W]`` mask of non-ignored pixels. ``mean(v)``
    takes ``v [N, K, H, W]`` that is already zero at ignored pixels and returns
    the weighted local mean of every channel; at ignored centers it is 0 (their
    statistics are never used, and their window may hold no valid pixel).
    The mean divides by the window's weight sum rather than multiplying by its
    reciprocal, so a window whose valid pixels all hold the same value has
    exactly that mean (and a binary map's variance there is exactly 0).
    ``window_sum(v)`` is the plain weighted sum over each full window (zero
    padding), a depthwise convolution (in two 1-D passes for wide windows); as the
    window is symmetric, it is also the transpose of that sum, so the gradient
    of ``mean`` is ``window_sum(g / weight_sum)``.

    The mask and the weight sum come in ``v``'s shape and layout (:meth:`mask_like`,
    :meth:`weight_sum_like`, see :func:`repeat_channels`), kept per channel count.
    """

    def __init__(self, size: int, sigma, valid: torch.Tensor, dtype: torch.dtype):
        self.size = size
        self.factor = window_1d(size, sigma).to(dtype=dtype, device=valid.device)
        self.mask = valid.unsqueeze(1).to(dtype)  # [N, 1, H, W]
        self._per_channels = {}

    def window_sum(self, v: torch.Tensor) -> torch.Tensor:
        k, r = v.shape[1], self.size // 2
        if self.size < SEPARABLE_FROM:
            kernel = torch.outer(self.factor, self.factor).expand(k, 1, self.size, self.size)
            return F.conv2d(v, kernel, padding=r, groups=k)
        rows = F.conv2d(v, self.factor.view(1, 1, 1, -1).expand(k, 1, 1, self.size), padding=(0, r), groups=k)
        return F.conv2d(rows, self.factor.view(1, 1, -1, 1).expand(k, 1, self.size, 1), padding=(r, 0), groups=k)

    def mean(self, v: torch.Tensor) -> torch.Tensor:
        return self.window_sum(v).div_(self.weight_sum_like(v))

    def mask_like(self, v: torch.Tensor) -> torch.Tensor:
        """The valid mask (1 or 0) repeated over ``v``'s channels, channels-last."""
        return self._channels(v.shape[1])[0]

    def weight_sum_like(self, v: torch.Tensor) -> torch.Tensor:
        """The window's weight sum over the valid pixels, repeated over ``v``'s channels, channels-last;
        infinite at ignored centers, so that dividing by it gives 0 there whatever the window holds. It is
        the window sum of :meth:`mask_like`, taken by the same convolution as ``v``'s: a one-channel
        convolution may add in another order, and ``window_sum(y) / weight_sum`` would then miss 1 by an
        ulp in windows of one label (seen with 11x11 windows on one image)."""
        return self._channels(v.shape[1])[1]

    def _channels(self, k: int):
        if k not in self._per_channels:
            mask = repeat_channels(self.mask, k)
            # Infinite at ignored centers as (sum + tiny) / 0, also where the sum is 0; at valid centers the sum
            # (at least the center's weight) is bitwise unchanged by tiny and by the division by 1. Two float
            # passes: a boolean mask and masked_fill_ take 4x as long on CPU.
            weight_sum = self.window_sum(mask).add_(torch.finfo(mask.dtype).tiny).div_(mask)
            self._per_channels[k] = mask, weight_sum
        return self._per_channels[k]


def repeat_channels(m: torch.Tensor, k: int) -> torch.Tensor:
    """A one-channel map ``[N, 1, H, W]`` repeated over ``k`` channels, channels-last: broadcasting one
    channel over a channels-last map is about 4x slower on CPU than a full-size operand (and a boolean ``m``
    is 3x slower to repeat as floats than a float one)."""
    n, _, h, w = m.shape
    out = torch.empty((n, k, h, w), dtype=m.dtype, device=m.device, memory_format=torch.channels_last)
    return out.copy_(m.expand(n, k, h, w))


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
        # Flooring the variance at (c4 eps / 4)^2 instead of 0 leaves std + c4 bitwise unchanged (the floor's
        # root is under half an ulp of c4) and keeps sqrt off its slow path for zeros on CPU.
        floor = (c4 * torch.finfo(v.dtype).eps / 4) ** 2
        den = var.clamp_(min=floor).sqrt_().add_(c4)
        if c4 == 0:
            den.masked_fill_(den == 0, math.inf)
        return torch.sub(v, mu, out=mu).add_(c4), den


def class_chunks(num_classes: int, start: int = 0):
    """Slices of ``CLASS_CHUNK`` classes covering ``start..num_classes-1``."""
    return [slice(first, min(first + CLASS_CHUNK, num_classes)) for first in range(start, num_classes, CLASS_CHUNK)]


def normalized_zero(c4: float) -> float:
    """What :func:`normalized_parts` gives everywhere for a map that is 0 in every window (the one-hot map of a
    class absent from the batch): ``(0 - 0 + c4) / (0 + c4) = 1``, or 0 when ``c4 = 0`` (zero variance)."""
    return 1.0 if c4 > 0 else 0.0


class ClassChunk(NamedTuple):
    """A chunk of classes: their ``positions`` in the label order the chunk's one-hot maps are built from,
    their indices in the logits (``classes``), and whether any of them may be present in the batch."""

    positions: slice
    classes: list
    present: bool


def chunks_in_order(num_classes: int) -> list:
    """Chunks of the classes in their own order, all treated as present."""
    return [ClassChunk(s, list(range(s.start, s.stop)), True) for s in class_chunks(num_classes)]


class PresentFirst:
    """The classes reordered so that those present among the batch's valid labels come first.

    The one-hot map of an absent class is 0 everywhere, so its window statistics
    are known without computing them. ``labels`` are the batch's labels in the
    new order (ignored pixels: ``num_classes``; callers go by ``valid``) and
    ``chunks`` never mix present and absent classes; the logits are not
    reordered (:func:`gather_classes`, :func:`scatter_classes` use the chunk's ``classes``).
    """

    def __init__(self, target: torch.Tensor, valid: torch.Tensor, num_classes: int):
        labels = target.masked_fill(~valid, num_classes)  # ignored pixels counted as one more class
        # (index_fill_ rather than bincount, which has no deterministic CUDA implementation)
        present = torch.zeros(num_classes + 1, dtype=torch.bool, device=labels.device)
        present = present.index_fill_(0, labels.flatten(), True)[:num_classes]
        order = torch.argsort(~present, stable=True)
        rank = torch.empty(num_classes + 1, dtype=labels.dtype, device=labels.device)
        rank[order] = torch.arange(num_classes, dtype=labels.dtype, device=labels.device)
        rank[num_classes] = num_classes
        self.labels = rank.index_select(0, labels.flatten()).view_as(labels)  # far faster than rank[labels]
        num_present, order = int(present.sum()), order.tolist()
        self.chunks = [ClassChunk(s, order[s], True) for s in class_chunks(num_present)] + [
            ClassChunk(s, order[s], False) for s in class_chunks(num_classes, num_present)]


def image_groups(x: torch.Tensor) -> list:
    """The batch in the groups of images the chunked losses work through: one image at a time on CPU, where
    a chunk's temporaries are then smaller and stay in cache (at the bench's N=2, 257^2: SSL and SSIM peak
    memory about halved, time unchanged), the whole batch elsewhere (on a GPU, fewer and larger kernels)."""
    if x.device.type == "cpu":
        return [slice(n, n + 1) for n in range(x.shape[0])]
    return [slice(None)]


def present_chunks(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, size: int, sigma):
    """For each group of images (:func:`image_groups`) and each chunk of classes, present ones first
    (:class:`PresentFirst`, per group): ``(images, labels, stats, chunk)`` with ``images`` the group's
    slice of the batch, ``labels`` its labels in the chunks' order and ``stats`` its :class:`LocalStats`."""
    for images in image_groups(x):
        order = PresentFirst(target[images], valid[images], x.shape[1])
        stats = LocalStats(size, sigma, valid[images], x.dtype)
        for chunk in order.chunks:
            yield images, order.labels, stats, chunk


def gather_classes(x: torch.Tensor, classes: list) -> torch.Tensor:
    """The classes ``classes`` of ``x`` as a new channels-last tensor (depthwise convolutions are far faster
    on channels-last input): selected along the last axis of ``x``'s channels-last view (on CPU, 0.14 ms
    against 0.20 ms for one copy per class, for 8 of 21 classes of a 257x257 image)."""
    index = torch.tensor(classes, device=x.device)
    return x.permute(0, 2, 3, 1).index_select(3, index).permute(0, 3, 1, 2)


def scatter_classes(dst: torch.Tensor, classes: list, src: torch.Tensor) -> None:
    """``dst[:, classes] = src``, one copy per class (``index_copy_`` from channels-last is several times slower)."""
    for j, c in enumerate(classes):
        dst[:, c].copy_(src[:, j])


def one_hot_chunk(target: torch.Tensor, valid: torch.Tensor, classes: slice, dtype: torch.dtype,
                  channels_last: bool = False) -> torch.Tensor:
    """``[N, k, H, W]`` one-hot map of the classes in ``classes`` (0 at ignored pixels), in channels-last
    layout if asked (what the window convolutions want)."""
    n, h, w = target.shape
    k = classes.stop - classes.start
    index = (target - classes.start).unsqueeze(1)
    inside = (valid.unsqueeze(1) & (index >= 0) & (index < k)).to(dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, k, h, w), dtype=dtype, device=target.device, memory_format=layout)
    return out.zero_().scatter_(1, index.clamp_(0, k - 1), inside)


def log_q(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log q`` with ``q = sigmoid(x)`` where ``y = 1`` and ``sigmoid(-x)`` where ``y = 0`` (the probability
    given to the target side): minus the per-entry BCE. ``q`` is kept above the dtype's smallest normal
    number, so an entry's BCE saturates at about 87 in float32 (``|x| > 87``); ``F.logsigmoid`` and
    ``log1p`` are many times slower on CPU. ``y=None`` stands for a map of zeros (an absent class)."""
    signed = x.neg() if y is None else torch.addcmul(x, x, y, value=-2.0).neg_()  # x (2 y - 1)
    return signed.sigmoid_().clamp_(min=torch.finfo(x.dtype).tiny).log_()


class _AttachGrad(torch.autograd.Function):
    """Returns ``value``; its gradient w.r.t. ``x`` is ``gradient(*tensors, grad_output)`` (first order only)."""

    @staticmethod
    def forward(ctx, x, value, gradient, *tensors):
        ctx.gradient = gradient
        ctx.save_for_backward(*tensors)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        tensors = ctx.saved_tensors
        return (ctx.gradient(*tensors, grad_output), None, None) + (None,) * len(tensors)


class Precomputed:
    """The backward of a loss that computes its gradient ``grad`` along with its value: hand
    ``(Precomputed(grad, recompute), (x, target, valid))`` to :func:`eager_forward`.

    The first backward gives ``grad`` to autograd and keeps no reference to it, so autograd needs no copy,
    and for the usual ``grad_output`` of 1 on CPU not even the product (a pass over memory that has left the
    cache: about 2 ms, 8 % of SSIM, at the bench's CPU size). A later backward through a retained graph
    computes the gradient again with ``recompute(x, target, valid)``."""

    def __init__(self, grad: torch.Tensor, recompute):
        self.grad, self.recompute = grad, recompute

    def __call__(self, x, target, valid, grad_output):
        grad, self.grad = self.grad, None
        if grad is None:
            grad = self.recompute(x, target, valid)
        if grad_output.device.type != "cpu" or not bool(grad_output == 1):
            grad.mul_(grad_output)
        return grad


def eager_forward(value_and_grad, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The forward of a loss that works out its own gradient, without an autograd graph:
    ``value_and_grad(x, target, valid, with_grad) -> (value, backward)`` on checked inputs in the compute
    dtype, ``backward`` (not used when ``with_grad`` is false) ``(gradient, tensors)`` with
    ``gradient(*tensors, grad_output)`` the gradient w.r.t. ``x`` (:class:`Precomputed` for a gradient
    computed along with the value). The result is a scalar carrying that gradient; a batch with no valid
    pixel gives a zero with a graph."""
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        if not bool(valid.any()):
            return zero_with_graph(x)
        with_grad = torch.is_grad_enabled() and x.requires_grad
        value, backward = value_and_grad(x, target, valid, with_grad)
        if not with_grad:
            return value
        gradient, tensors = backward
        return _AttachGrad.apply(x, value, gradient, *tensors)


def eager_terms(terms, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, keys) -> dict:
    """``terms(x, target, valid) -> tuple`` on checked inputs, as a dict over ``keys``; zeros if no pixel is valid."""
    with autocast_off(logits.device.type), torch.no_grad():
        x, target, valid = prepare(logits, target, ignore_index)
        if not bool(valid.any()):
            return {k: x.new_zeros(()) for k in keys}
        return dict(zip(keys, terms(x, target, valid)))
