"""Locally adaptive loss, LAD (LAD paper, Section 3, Eqs. 2-5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ._functional import autocast_off, check_window, prepare, zero_with_graph


class _Standardize(torch.autograd.Function):
    """Standard score of each pixel's logit vector over the class axis (LAD Sec. 3.1):
    ``x = (x_hat - mean_c) / (std_c + eps)`` with the population std.

    The result is channels-last, the layout of the pooling's convolution and row
    gathers. The backward is written out, ``(g - mean_c g) / (std + eps) - x * mean_c(g x) / std``,
    so that it holds one full-size temporary instead of autograd's chain of them;
    where ``std = 0`` (all logits of a pixel equal, e.g. a zero-initialised head)
    the std gets a zero subgradient instead of ``sqrt``'s infinite one.
    """

    @staticmethod
    def forward(ctx, logits, eps):
        # Written channels-last straight from the logits: no extra full-size copy (each fresh one costs page
        # faults on CPU), as the norm below needs no squared copy.
        xc = torch.sub(logits, logits.mean(dim=1, keepdim=True),
                       out=torch.empty_like(logits, memory_format=torch.channels_last))
        std = torch.linalg.vector_norm(xc, dim=1, keepdim=True).div_(logits.shape[1] ** 0.5)  # no squared copy
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


def standardize(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(x_hat - mean_c) / (std_c + eps)`` over the class axis, population std (LAD Sec. 3.1), channels-last."""
    return _Standardize.apply(logits, eps)


def _label_maps(target: torch.Tensor, valid: torch.Tensor, stride: int):
    """int32 labels of the strided centers (-1 where ignored) and of all pixels as neighbours
    (-2 where ignored): one equality test then gives ``mu``, false at ignored pixels."""
    labels = target.to(torch.int32)
    return torch.where(valid, labels, -1)[:, ::stride, ::stride], torch.where(valid, labels, -2)


def window_weights(kernel_size: int) -> torch.Tensor:
    """``[k, k]`` float64 weights ``w = 2^(1 - D8)`` of the window offsets (LAD Eq. 2)."""
    i = torch.arange(kernel_size) - kernel_size // 2
    d8 = torch.maximum(i.abs()[:, None], i.abs()[None, :])
    return torch.pow(2.0, 1.0 - d8.double())


def _rows(v: torch.Tensor) -> torch.Tensor:
    """The ``[N * H * W, C]`` view of a channels-last map: one row of ``C`` values per pixel."""
    return v.permute(0, 2, 3, 1).view(-1, v.shape[1])


def _box_counts(v: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """Counts of the true entries of boolean ``v [N, P, Q]`` in every ``height x width`` box whose corner is at
    every ``stride``-th row and column (an integral image, exact in int32)."""
    c = F.pad(v.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32), (1, 0, 1, 0))
    h, w, s = height, width, stride
    return c[:, h::s, w::s] - c[:, :-h:s, w::s] - c[:, h::s, :-w:s] + c[:, :-h:s, :-w:s]


class _Boundary:
    """The valid centers whose window is not uniform, where ``mu`` is tested offset by offset.

    A center is *interior* when its whole ``k x k`` window lies in the image and
    carries its (valid) label: there ``mu = 1`` at every offset, ``xi = k^2`` and
    the weighted sum is a plain depthwise convolution. The other valid centers
    (near a label edge, an ignored pixel or the image border) are gathered:
    ``index`` holds their flat positions on the center grid, and ``offsets``
    yields each window offset's ``mu`` and neighbour pixels for them (nothing is
    kept per offset). ``centers`` ``[N, h, w]`` (-1: ignored) sit at every
    ``stride``-th pixel of ``neighbours`` ``[N, H, W]`` (-2: ignored).
    """

    def __init__(self, centers: torch.Tensor, neighbours: torch.Tensor, kernel_size: int, stride: int):
        k, r = kernel_size, kernel_size // 2
        # A window is uniform when it holds no ignored or outside pixel (padded as -3) and no two adjacent
        # pixels in it differ (it is connected); counted with integral images.
        padded = F.pad(neighbours, (r, r, r, r), value=-3)
        bad = _box_counts(padded < 0, k, k, stride)
        if k > 1:
            bad += _box_counts(padded[:, :, 1:] != padded[:, :, :-1], k, k - 1, stride)
            bad += _box_counts(padded[:, 1:] != padded[:, :-1], k - 1, k, stride)
        self.interior = bad == 0
        self.index = ((centers >= 0) & ~self.interior).flatten().nonzero().squeeze(1)
        h, w = centers.shape[1:]
        self.height, self.width = neighbours.shape[1:]
        n, a, b = self.index // (h * w), self.index // w % h, self.index % w
        self.rows = stride * a
        index_dtype = torch.int32 if neighbours.numel() < 2**31 else torch.int64  # pixel indices, small
        self.base = ((n * self.height + self.rows) * self.width + stride * b).to(index_dtype)
        cols = stride * b + torch.arange(-r, r + 1, device=centers.device).unsqueeze(1)
        self.cols_in = (cols >= 0) & (cols < self.width)  # [k, B]: the neighbour's column per column offset
        self.labels, self.neighbours = centers.flatten().index_select(0, self.index), neighbours.flatten()
        self.kernel_size = k

    def offsets(self, dtype):
        """Per window offset: ``(w, neighbour pixel index, mu in dtype)`` for the boundary centers; the
        index is clamped into the batch where the neighbour is outside the image (``mu`` is 0 there).
        Worked out one row of the window at a time (``[k, B]``, int32 and bool: a few bytes per center and
        offset of the row), which saves many small operations."""
        k, r = self.kernel_size, self.kernel_size // 2
        weights = window_weights(k).tolist()
        shifts = torch.arange(-r, r + 1, device=self.base.device, dtype=self.base.dtype).unsqueeze(1)
        for i in range(k):
            index = (self.base + (shifts + (i - r) * self.width)).clamp_(0, len(self.neighbours) - 1)
            mu = self.neighbours.index_select(0, index.flatten()).view_as(index) == self.labels
            rows_in = (self.rows >= r - i) & (self.rows < self.height + r - i)
            mu.logical_and_(self.cols_in).logical_and_(rows_in)
            for j in range(k):
                yield weights[i][j], index[j], mu[j].to(dtype)

    def pooled(self, v: torch.Tensor, with_count: bool = False):
        """``sum_q mu(q) w(q) v(q)`` at the boundary centers, ``[B, C]``, for channels-last ``v``
        ``[N, C, H, W]``; with ``xi = sum_q mu(q)`` if asked."""
        rows = _rows(v)
        total = rows.new_zeros((len(self.index), v.shape[1]))
        count = rows.new_zeros(len(self.index))
        for w, index, mu in self.offsets(v.dtype):
            total.addcmul_(rows.index_select(0, index), mu.unsqueeze(1), value=w)
            if with_count:
                count += mu
        return (total, count) if with_count else total


def _window_sum(v: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """``sum_q w(q) v(q)`` over the full window of every ``stride``-th pixel (zero padding), channels-last."""
    c = v.shape[1]
    weight = window_weights(kernel_size).to(v).expand(c, 1, kernel_size, kernel_size)
    out = F.conv2d(v, weight, padding=kernel_size // 2, stride=stride, groups=c)
    return out.contiguous(memory_format=torch.channels_last)


class _SelectivePool(torch.autograd.Function):
    """``f(p) = (1/xi) * sum_q mu(q) w(q) x(q)`` at the strided centers (LAD Eq. 2).

    Interior centers (uniform window) are a depthwise convolution divided by
    ``k^2``; the boundary centers are gathered offset by offset (:class:`_Boundary`);
    ignored centers give 0. ``f`` is linear in ``x`` and ``mu`` is symmetric,
    so the backward is the same pooling, unnormalized and at stride 1, of
    ``grad / xi`` placed on the center grid. Memory holds a few maps of the
    logits' size and ``[B, C]`` rows, never one per window offset.
    """

    @staticmethod
    def forward(ctx, x, centers, neighbours, kernel_size, stride):
        x = x.contiguous(memory_format=torch.channels_last)
        boundary = _Boundary(centers, neighbours, kernel_size, stride)
        total, xi = boundary.pooled(x, with_count=True)
        inv_xi_boundary = xi.reciprocal_()  # xi >= 1: the center itself counts
        # 1 / xi on the center grid: 1 / k^2 inside, 0 at ignored centers.
        inv_xi = boundary.interior.to(x.dtype).div_(kernel_size**2).unsqueeze(1)
        inv_xi.view(-1)[boundary.index] = inv_xi_boundary
        out = _window_sum(x, kernel_size, stride).mul_(inv_xi)
        _rows(out).index_copy_(0, boundary.index, total.mul_(inv_xi_boundary.unsqueeze(1)))
        ctx.save_for_backward(neighbours, inv_xi)
        ctx.shape, ctx.kernel_size, ctx.stride = x.shape, kernel_size, stride
        ctx.boundary = boundary if stride == 1 else None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        neighbours, inv_xi = ctx.saved_tensors
        k, s = ctx.kernel_size, ctx.stride
        h = torch.mul(grad, inv_xi, out=torch.empty_like(grad, memory_format=torch.channels_last))
        boundary = ctx.boundary
        if s > 1:  # grad / xi at the centers' pixels, 0 elsewhere; the pixels themselves as centers
            full = h.new_zeros(ctx.shape).contiguous(memory_format=torch.channels_last)
            full[:, :, ::s, ::s] = h
            h = full
            boundary = _Boundary(neighbours.clamp(min=-1), neighbours, k, 1)
        grad_x = _window_sum(h, k, 1).mul_(boundary.interior.unsqueeze(1).to(h.dtype))
        _rows(grad_x).index_copy_(0, boundary.index, boundary.pooled(h))
        return grad_x, None, None, None, None


class LADLoss(nn.Module):
    """Locally adaptive loss (LAD paper, Section 3).

    Standardized logits (Sec. 3.1) are pooled over the same-label pixels of a
    ``kernel_size x kernel_size`` window around each valid center with weights
    ``2^(1 - D8)`` and divided by the same-label count ``xi`` (Eq. 2); the
    local loss is the softmax cross entropy of the pooled vector (Eqs. 3-4);
    the local losses of the valid centers (every ``stride``-th row and column,
    starting at 0) are Minkowski pooled, ``(mean L_S^k)^(1/k)`` (Eq. 5).
    """

    def __init__(self, kernel_size: int = 5, k: float = 3.0, stride: int = 1, ignore_index: int = 255):
        super().__init__()
        check_window("kernel_size", kernel_size)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride <= 0:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        if not k > 0:
            raise ValueError(f"Minkowski exponent k must be > 0, got {k!r}")
        self.kernel_size = kernel_size
        self.k = k
        self.stride = stride
        self.ignore_index = ignore_index

    def _strided_local(self, logits: torch.Tensor, target: torch.Tensor):
        """``L_S`` and the valid mask on the strided center grid (Eqs. 2-4)."""
        x, target, valid = prepare(logits, target, self.ignore_index)
        s = self.stride
        centers, neighbours = _label_maps(target, valid, s)
        f = _SelectivePool.apply(standardize(x), centers, neighbours, self.kernel_size, s)
        local = F.cross_entropy(f, target[:, ::s, ::s], ignore_index=self.ignore_index, reduction="none")
        return local, valid[:, ::s, ::s], x

    def _minkowski(self, local: torch.Tensor) -> torch.Tensor:
        """Minkowski pooling of the valid local losses, ``(mean L_S^k)^(1/k)`` (Eq. 5)."""
        return local.pow(self.k).mean().pow(1.0 / self.k)

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
        with autocast_off(logits.device.type):
            local, valid, x = self._strided_local(logits, target)
            if not bool(valid.any()):
                return zero_with_graph(x)
            return self._minkowski(local[valid])

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict:
        """``lad`` (the loss) and the mean and max of the local losses ``L_S`` over the valid centers."""
        with autocast_off(logits.device.type):
            local, valid, x = self._strided_local(logits, target)
            if not bool(valid.any()):
                zero = zero_with_graph(x)
                return {"lad": zero, "local_mean": zero, "local_max": zero}
            local = local[valid]
            return {
                "lad": self._minkowski(local),
                "local_mean": local.mean(),
                "local_max": local.max(),
            }
