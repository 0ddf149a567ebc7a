"""Weighted local statistics over a square window (SSL Sec. 3.3, Eqs. 14-15), the fast form.

The window is a ``size x size`` circular-symmetric Gaussian of standard
deviation ``sigma`` normalized to unit sum (``sigma=None``: uniform). The
statistics of a pixel are taken over the in-image, non-ignored pixels of its
window only, with the window weights renormalized to sum to one over those
pixels: ``mean(v)_i = sum_j w_(j-i) m_j v_j / sum_j w_(j-i) m_j`` with ``m``
the valid mask. Both sums are depthwise convolutions with zero padding.
That is ``border="renorm"``; the other conventions of the image border
(:data:`BORDERS`) change only the pixels outside the image: ``"zero"`` counts
them as zeros that keep their weight (the weights are not renormalized for
them, as in the usual public SSIM), ``"valid"`` keeps only the centers whose
window lies entirely inside the image. Ignored pixels are renormalized out
under all three.
:func:`segrepro.losses.reference.local_mean` is the same statistic in one line.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Windows at least this wide are summed in two 1-D passes (rows, then columns), smaller ones in one 2-D pass
# (docs/performance.md).
SEPARABLE_FROM = 7

# The image border of the windowed statistics (SSL, SSIM): renormalized over the in-image pixels, zero padded,
# or only the windows entirely inside the image.
BORDERS = ("renorm", "zero", "valid")


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


def window_inside(height: int, width: int, size: int, device=None) -> torch.Tensor:
    """``[H, W]`` bool: true at the centers whose ``size x size`` window lies entirely inside the image
    (``border="valid"``)."""
    r = size // 2
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    return ((rows >= r) & (rows < height - r))[:, None] & ((cols >= r) & (cols < width - r))[None, :]


def outside_weight(height: int, width: int, window: torch.Tensor) -> torch.Tensor:
    """``[1, 1, H, W]``: the weight of each pixel's ``size x size`` ``window`` that falls outside the image (0
    where the window lies inside, exactly): the window sum of a map that is 1 outside the image and 0 in it
    (``border="zero"``)."""
    r = window.shape[-1] // 2
    ones_outside = F.pad(window.new_zeros(1, 1, height, width), (r, r, r, r), value=1.0)
    return F.conv2d(ones_outside, window[None, None])


def center_weight(size: int, sigma) -> float:
    """Weight ``w_c`` of the center of the full, normalized window."""
    return float(window_1d(size, sigma)[size // 2]) ** 2


class LocalStats:
    """Renormalized local means over the valid pixels of each window.

    ``valid`` is the ``[N, H, W]`` mask of non-ignored pixels. ``mean(v)``
    takes ``v [N, K, H, W]`` that is already zero at ignored pixels and returns
    the weighted local mean of every channel; at ignored centers it is 0 (their
    statistics are never used, and their window may hold no valid pixel).
    ``border`` (:data:`BORDERS`): with ``"zero"`` the weight sum also holds the
    window's weight outside the image; with ``"valid"`` the centers whose window
    crosses the border are treated as ignored centers (mean 0, weight sum
    infinite). ``centers`` (``[N, H, W]`` bool) are the centers whose statistics
    are used: ``valid``, less those border centers with ``"valid"``.
    The mean divides by the window's weight sum rather than multiplying by its
    reciprocal, so a window whose valid pixels all hold the same value has
    exactly that mean (and a binary map's variance there is exactly 0).
    ``window_sum(v)`` is the plain weighted sum over each full window (zero
    padding), a depthwise convolution; as the window is symmetric, it is also
    the transpose of that sum, so the gradient of ``mean`` is ``window_sum(g / weight_sum)``.

    The mask and the weight sum come in ``v``'s shape and layout (:meth:`mask_like`,
    :meth:`weight_sum_like`, see :func:`repeat_channels`), kept per channel count.
    """

    def __init__(self, size: int, sigma, valid: torch.Tensor, dtype: torch.dtype, border: str = "renorm"):
        self.size = size
        self.border = border
        self.factor = window_1d(size, sigma).to(dtype=dtype, device=valid.device)
        self.mask = valid.unsqueeze(1).to(dtype)  # [N, 1, H, W]
        self.centers = valid & window_inside(*valid.shape[1:], size, valid.device) if border == "valid" else valid
        self.outside = None  # border="zero": the weight of each window outside the image, [1, 1, H, W]
        if border == "zero":
            self.outside = outside_weight(*valid.shape[1:], torch.outer(self.factor, self.factor))
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

    def center_mask_like(self, v: torch.Tensor) -> torch.Tensor:
        """``centers`` (1 or 0) repeated over ``v``'s channels, channels-last: :meth:`mask_like` itself unless
        ``border="valid"``."""
        return self._channels(v.shape[1])[2]

    def _channels(self, k: int):
        if k not in self._per_channels:
            mask = repeat_channels(self.mask, k)
            weight_sum = self.window_sum(mask)
            if self.outside is not None:  # the pixels outside the image keep their weight (0 inside: exact there)
                weight_sum.add_(self.outside)
            centers = mask if self.border != "valid" else repeat_channels(self.centers.unsqueeze(1).to(mask.dtype), k)
            # Infinite at ignored (and dropped border) centers as (sum + tiny) / 0, also where the sum is 0; at the
            # other centers the sum (at least the center's weight) is bitwise unchanged by tiny and by the
            # division by 1.
            weight_sum.add_(torch.finfo(mask.dtype).tiny).div_(centers)
            self._per_channels[k] = mask, weight_sum, centers
        return self._per_channels[k]


def repeat_channels(m: torch.Tensor, k: int) -> torch.Tensor:
    """A one-channel float map ``[N, 1, H, W]`` repeated over ``k`` channels, channels-last: a full-size
    operand for the chunk's element-wise steps, which broadcasting one channel is not (docs/performance.md)."""
    n, _, h, w = m.shape
    out = torch.empty((n, k, h, w), dtype=m.dtype, device=m.device, memory_format=torch.channels_last)
    return out.copy_(m.expand(n, k, h, w))
