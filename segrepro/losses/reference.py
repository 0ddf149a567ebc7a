"""Reference versions of the windowed losses: the formulas of the papers written out with plain autograd.

What it is for
--------------
The classes in :mod:`segrepro.losses` (``SSLLoss``, ``SSIMLoss``,
``AffinityFieldLoss``, ``LADLoss``) compute exactly these losses, but in chunks
of classes, with in-place steps and hand-written gradients. This module is the
same mathematics in a form to read next to the papers (the choices the papers
leave open are in ``docs/fidelity.md``): each block is one
equation, and autograd takes the gradients. It is also the oracle the fast
paths are tested against (``tests/test_losses_reference.py``, values and
gradients in float64, on both batch strategies). The two agree to float64
rounding; in float32 one difference is known: the fast paths' per-entry BCE
saturates at about 87 (``|logit| > 87``), :func:`ssl_loss` and :func:`ssim_loss`
use ``binary_cross_entropy_with_logits``, which does not.

How to use it
-------------
Every loss is a function of ``(logits [N, C, H, W], target [N, H, W])`` with
the keyword arguments of its class, and returns a differentiable scalar::

    from segrepro.losses.reference import ssl_loss
    value = ssl_loss(logits, target, region_size=3)
    value.backward()

They follow the common contract of the classes (input checks, float32 inside
for half precision and autocast, float64 stays float64, a batch with no valid
pixel gives a zero that keeps the graph), through the same helpers. They hold
full-size temporaries for all classes at once and an autograd graph of every
step: use them to read, check and debug, and the classes to train.

Contents: windows and local statistics (:func:`gaussian_window`,
:func:`local_mean`, :func:`local_stats`, :func:`window_centers`, :func:`shift`),
the BCE term (:func:`bce_term`), SSL (:func:`ssl_normalized`,
:func:`ssl_error_map`, :func:`ssl_e_max`, :func:`ssl_loss`), SSIM
(:func:`ssim_map`, :func:`ssim_loss`), the affinity
field loss (:func:`affinity_field_loss`) and LAD (:func:`standardize`,
:func:`selective_pool`, :func:`lad_local_losses`, :func:`lad_loss`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._functional import (
    REDUCTIONS, autocast_off, check_choice, check_fraction, check_positive, check_window, prepare, zero_with_graph,
)
from ._stats import BORDERS, check_sigma, outside_weight, window_inside

C1 = 0.01**2  # SSIM stability constants (SSL Eqs. 5-7, 9)
C2 = 0.03**2
SSIM_FORMS = ("eq7", "eq9")
AFFINITY_EPS = 1e-4  # clipping of p and 1 - p in the affinity field loss (official implementation)
LAD_EPS = 1e-5  # added to the std in LAD's standardization
LAD_POOLS = ("image", "batch")  # the scope of LAD's Minkowski pooling (Eq. 5)


# --------------------------------------------------------------------------------------------------------------
# Windows, local statistics, shifted maps
# --------------------------------------------------------------------------------------------------------------

def gaussian_window(size: int, sigma, dtype=torch.float64, device=None) -> torch.Tensor:
    """The ``size x size`` window of SSL Sec. 3.3: ``w(a, b) ∝ exp(-(a^2 + b^2) / (2 sigma^2))`` for offsets
    ``a, b`` in ``-size//2 .. size//2``, normalized to unit sum; uniform when ``sigma`` is None."""
    r = size // 2
    a = torch.arange(-r, r + 1, dtype=torch.float64)
    squared_distance = a[:, None] ** 2 + a[None, :] ** 2
    if sigma is None:
        w = torch.ones(size, size, dtype=torch.float64)
    else:
        w = torch.exp(-squared_distance / (2.0 * float(sigma) ** 2))
    return (w / w.sum()).to(dtype=dtype, device=device)


def window_sum(v: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``sum_(a,b) w(a, b) v(i + a, j + b)`` for every pixel and channel of ``v [N, K, H, W]``: a depthwise
    convolution with zero padding (the window is symmetric, so convolution and correlation agree)."""
    k, size = v.shape[1], window.shape[-1]
    return F.conv2d(v, window.expand(k, 1, size, size), padding=size // 2, groups=k)


def local_mean(v: torch.Tensor, mask: torch.Tensor, window: torch.Tensor, border: str = "renorm") -> torch.Tensor:
    """Weighted local mean over the valid pixels of each window, weights renormalized (SSL Eq. 14)::

        mean(v)_i = sum_j w_(j-i) m_j v_j / sum_j w_(j-i) m_j = conv(v * m, w) / conv(m, w)

    ``v [N, K, H, W]``, ``mask [N, 1, H, W]`` (1 valid, 0 ignored), ``window`` from :func:`gaussian_window`.
    The mask is made a full map of ``v``'s shape and memory layout, so that numerator and denominator are
    summed by the same convolution in the same order (a broadcast mask, or another layout, is summed in
    another order in float64 on CPU): where every valid pixel of a window holds the value 1 the quotient
    is exactly 1 (a window of one label has ``mu_y = 1`` and ``var_y = 0``, no rounding). A window without a
    pixel (only at ignored centers, whose statistics are never used) has denominator 0: it is replaced by
    1 so that no NaN reaches a value or a gradient.

    ``border``, the image border (ignored pixels are left out, weights renormalized, under all three):

    - ``"renorm"``: as above, the pixels outside the image are left out like ignored ones;
    - ``"zero"``: they are zeros that keep their weight, ``conv(v * m, w) / (conv(m, w) + outside_weight)``;
      with no ignored pixel, the zero-padded mean of the usual SSIM (weights not renormalized);
    - ``"valid"``: as ``"renorm"`` here; the losses then drop the centers whose window crosses the border
      (:func:`window_centers`).
    """
    mask = torch.ones_like(v) * mask  # [N, K, H, W], v's layout
    num = window_sum(v * mask, window)
    den = window_sum(mask, window)
    if border == "zero":
        den = den + outside_weight(*v.shape[-2:], window)
    return num / torch.where(den > 0, den, 1.0)


def local_stats(v: torch.Tensor, mask: torch.Tensor, window: torch.Tensor, border: str = "renorm"):
    """``(mu, var)``: local mean (Eq. 14) and population variance ``var = E[v^2] - mu^2`` (Eq. 15), not
    clamped. For a binary map ``v^2 = v``, so this is also Eq. 16's ``mu_y - mu_y^2``."""
    mu = local_mean(v, mask, window, border)
    return mu, local_mean(v * v, mask, window, border) - mu * mu


def window_centers(valid: torch.Tensor, size: int, border: str) -> torch.Tensor:
    """The valid pixels whose window statistics the losses use: all of them, or with ``border="valid"`` only
    those whose ``size x size`` window lies entirely inside the image."""
    return valid & window_inside(*valid.shape[1:], size, valid.device) if border == "valid" else valid


def shift(t: torch.Tensor, dy: int, dx: int, fill) -> torch.Tensor:
    """The map of the neighbours at offset ``(dy, dx)``: ``out[..., i, j] = t[..., i + dy, j + dx]``, and
    ``fill`` where that pixel is outside the image. Works on the last two axes of any dtype."""
    h, w = t.shape[-2:]
    ry, rx = abs(dy), abs(dx)
    padded = F.pad(t, (rx, rx, ry, ry), value=fill)
    return padded[..., ry + dy: ry + dy + h, rx + dx: rx + dx + w]


def one_hot(target: torch.Tensor, valid: torch.Tensor, num_classes: int, dtype) -> torch.Tensor:
    """``[N, H, W]`` labels to the ``[N, C, H, W]`` one-hot map ``y``; 0 in every class at ignored pixels."""
    y = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2)
    return (y * valid.unsqueeze(1)).to(dtype)


def _entries(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The valid (pixel, class) entries: ``valid [N, H, W]`` repeated over the classes of ``x``."""
    return valid.unsqueeze(1).expand_as(x)


def _bce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-entry sigmoid cross entropy ``-(y log p + (1 - y) log(1 - p))``, ``p = sigmoid(x)``."""
    return F.binary_cross_entropy_with_logits(x, y, reduction="none")


def bce_term(bce: torch.Tensor, valid: torch.Tensor, reduction: str = "pixel") -> torch.Tensor:
    """The BCE ``L_ce`` of Eq. 17 from the per-entry ``bce [N, C, H, W]``: the mean over the valid (pixel,
    class) entries (``"entry"``), or summed over the classes and averaged over the valid pixels (``"pixel"``,
    the ``-1/N sum_n sum_c`` of SSL Eq. 1; ``C`` times ``"entry"``)."""
    if reduction == "pixel":
        return bce.sum(1)[valid].mean()
    return bce[_entries(bce, valid)].mean()


# --------------------------------------------------------------------------------------------------------------
# SSL (SSL paper, Sec. 3, Eqs. 10-17)
# --------------------------------------------------------------------------------------------------------------

def ssl_normalized(v: torch.Tensor, mask: torch.Tensor, window: torch.Tensor, c4: float = 0.01,
                   border: str = "renorm") -> torch.Tensor:
    """One side of SSL Eq. 10, the locally normalized map ``(v - mu + C4) / (sigma + C4)``, with ``mu`` and
    ``sigma^2`` the local statistics of Eqs. 14-15 (``sigma^2`` clamped at 0 before the root; for the
    one-hot ``y`` this is Eq. 16). Only ``c4 = 0`` can give ``sigma + C4 = 0`` (a window of constant
    values, where ``v = mu``): the normalized value is then taken as 0 (docs/fidelity.md, Figure 2)."""
    mu, var = local_stats(v, mask, window, border)
    den = var.clamp(min=0).sqrt() + c4
    return torch.where(den > 0, (v - mu + c4) / torch.where(den > 0, den, 1.0), 0.0)


def ssl_e_max(region_size: int, sigma, c4: float = 0.01) -> float:
    """``e_max`` of SSL Eq. 11: the theoretical range ``y_nor_max - y_nor_min`` of Eq. 16 (Sec. 3.3) for the
    full window, ``2 (1 - w_c) / (sqrt(w_c (1 - w_c)) + C4)`` with ``w_c`` its center weight. A constant:
    not recomputed at borders or beside ignored pixels. 0 for ``region_size = 1`` (``w_c = 1``)."""
    if region_size == 1:
        return 0.0
    w_c = float(gaussian_window(region_size, sigma)[region_size // 2, region_size // 2])
    return 2.0 * (1.0 - w_c) / (math.sqrt(w_c * (1.0 - w_c)) + c4)


def _ssl_error(x, target, valid, region_size, sigma, c4, border):
    """``e`` of Eq. 10 on checked inputs, without gradient; 0 at ignored pixels (and, ``border="valid"``, at
    the pixels whose window crosses the image border)."""
    with torch.no_grad():
        mask = valid.unsqueeze(1).to(x.dtype)
        window = gaussian_window(region_size, sigma, x.dtype, x.device)
        p = torch.sigmoid(x) * mask  # p = sigmoid(logits); ignored pixels take no part in any statistic
        y = one_hot(target, valid, x.shape[1], x.dtype)  # C binary images
        e = (ssl_normalized(y, mask, window, c4, border) - ssl_normalized(p, mask, window, c4, border)).abs()
        return torch.where(_entries(x, window_centers(valid, region_size, border)), e, 0.0)


def ssl_error_map(logits, target, region_size: int = 3, sigma=1.5, c4: float = 0.01, ignore_index: int = 255,
                  border: str = "renorm"):
    """``e = |y_nor - p_nor|`` of SSL Eq. 10, ``[N, C, H, W]``, detached; 0 at ignored pixels (and, with
    ``border="valid"``, where the window crosses the image border) (``SSLLoss.error_map``)."""
    check_window("region_size", region_size)
    check_sigma(sigma)
    check_choice("border", border, BORDERS)
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        return _ssl_error(x, target, valid, region_size, sigma, c4, border)


def ssl_loss(logits, target, region_size: int = 3, sigma=1.5, beta: float = 0.1, lam: float = 0.5,
             c4: float = 0.01, ohem: bool = True, reweight: bool = True, ignore_index: int = 255,
             border: str = "renorm", reduction: str = "pixel"):
    """``lam * BCE + (1 - lam) * L_ssl`` (SSL Eq. 17), ``SSLLoss``.

    - ``e`` (Eq. 10, :func:`ssl_error_map`), a constant weight: no gradient flows through it.
    - ``f = 1{e > beta * e_max}`` (Eq. 11, :func:`ssl_e_max`); every valid entry when ``ohem=False``. With
      ``border="valid"`` the entries whose window crosses the image border are never hard.
    - ``L_ssl(n, c) = e f L_ce`` (Eq. 12; ``e`` replaced by 1 when ``reweight=False``), ``L_ce`` the
      sigmoid cross entropy of the entry.
    - ``L_ssl = (1 / M) sum_(n, c) L_ssl(n, c)``, ``M = sum f`` the number of hard entries (Eq. 13),
      over the valid (pixel, class) entries of the batch; ``M = 0`` gives 0.
    - ``BCE``: the sigmoid cross entropy of the valid entries, reduced by :func:`bce_term` (the ``L_ce`` of
      Eq. 17).
    """
    check_window("region_size", region_size)
    check_sigma(sigma)
    check_choice("border", border, BORDERS)
    check_choice("reduction", reduction, REDUCTIONS)
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        if not bool(valid.any()):
            return zero_with_graph(x)
        candidates = _entries(x, window_centers(valid, region_size, border))  # the entries that have an e
        y = one_hot(target, valid, x.shape[1], x.dtype)
        bce = _bce(x, y)

        e = _ssl_error(x.detach(), target, valid, region_size, sigma, c4, border)  # Eq. 10
        f = (e > beta * ssl_e_max(region_size, sigma, c4)) & candidates if ohem else candidates  # Eq. 11
        weight = e if reweight else torch.ones_like(e)
        l_ssl = (weight * f * bce).sum() / f.sum().clamp(min=1)  # Eqs. 12-13
        l_ce = bce_term(bce, valid, reduction)
        return lam * l_ce + (1.0 - lam) * l_ssl  # Eq. 17


# --------------------------------------------------------------------------------------------------------------
# SSIM (SSL paper, Eqs. 5-7 and 9)
# --------------------------------------------------------------------------------------------------------------

def ssim_map(p: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, window: torch.Tensor,
             form: str = "eq7", border: str = "renorm") -> torch.Tensor:
    """Local structural similarity of ``p`` and ``y`` per pixel and channel, with the weighted population
    statistics of :func:`local_stats` (no clamp; image border ``border``) and ``cov = E[p y] - mu_p mu_y``:

    - ``S2 = (2 cov + C2) / (var_p + var_y + C2)``, the contrast-structure term (Eq. 9: ``form="eq9"``);
    - ``SSIM = S1 S2`` with ``S1 = (2 mu_p mu_y + C1) / (mu_p^2 + mu_y^2 + C1)`` (Eqs. 6-7: ``form="eq7"``).

    This is ``S``; some public SSIM losses report ``(1 - S) / 2`` instead of ``1 - S``.
    """
    mu_p, var_p = local_stats(p, mask, window, border)
    mu_y, var_y = local_stats(y, mask, window, border)
    cov = local_mean(p * y, mask, window, border) - mu_p * mu_y
    s2 = (2 * cov + C2) / (var_p + var_y + C2)
    if form == "eq9":
        return s2
    s1 = (2 * mu_p * mu_y + C1) / (mu_p**2 + mu_y**2 + C1)
    return s1 * s2


def ssim_loss(logits, target, window_size: int = 3, sigma=1.5, form: str = "eq7", lam: float = 0.5,
              ignore_index: int = 255, border: str = "renorm", reduction: str = "pixel"):
    """``lam * BCE + (1 - lam) * L_ssim`` (``SSIMLoss``): ``L_ssim`` the mean of ``1 - S`` (Eq. 7, or
    ``1 - S2``, Eq. 9) over the valid (pixel, class) entries (with ``border="valid"``, those whose window lies
    inside the image; 0 if there is none), between ``p = sigmoid(logits)`` (0 at ignored pixels) and the
    one-hot ``y``, windows as in SSL; combined with BCE (:func:`bce_term`) as SSL Eq. 17 does. The gradient
    flows through the statistics of ``p``."""
    check_window("window_size", window_size)
    check_sigma(sigma)
    check_choice("form", form, SSIM_FORMS)
    check_choice("border", border, BORDERS)
    check_choice("reduction", reduction, REDUCTIONS)
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        if not bool(valid.any()):
            return zero_with_graph(x)
        scored = _entries(x, window_centers(valid, window_size, border))
        mask = valid.unsqueeze(1).to(x.dtype)
        window = gaussian_window(window_size, sigma, x.dtype, x.device)
        p = torch.sigmoid(x) * mask
        y = one_hot(target, valid, x.shape[1], x.dtype)
        s = ssim_map(p, y, mask, window, form, border)
        l_ssim = (1.0 - s)[scored].sum() / max(int(scored.sum()), 1)
        l_ce = bce_term(_bce(x, y), valid, reduction)
        return lam * l_ce + (1.0 - lam) * l_ssim


# --------------------------------------------------------------------------------------------------------------
# Affinity field loss (Ke et al., ECCV 2018, non-adaptive form; SSL Table 5)
# --------------------------------------------------------------------------------------------------------------

def affinity_offsets(kernel_size: int) -> list:
    """The 8 neighbours ``{-s, 0, s}^2`` minus the center, ``s = kernel_size // 2`` (a dilated 3x3); none
    for ``kernel_size = 1``."""
    s = kernel_size // 2
    return [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)]


def affinity_field_loss(logits, target, kernel_size: int = 3, margin: float = 3.0, lam_edge: float = 1.0,
                        lam_nonedge: float = 1.0, progress: float = 0.0, decay: bool = True,
                        ignore_index: int = 255, official_pairs: bool = True):
    """``CE + dec * (lam_edge * edge + lam_nonedge * non_edge)`` (``AffinityFieldLoss``).

    ``p = softmax(logits)``; per class ``c``, ``p_c`` is a two-outcome variable. For every (pixel, class,
    direction) whose center and neighbour are both inside the image and not ignored (and, with
    ``official_pairs``, the pixel on the opposite side of the center too: the official code's
    ``ignores_from_label``, whose ignore map is padded with "ignored")::

        KL(neighbour || center) = P_n log(P_n / P_c) + Q_n log(Q_n / Q_c)

    with ``P = clip(p, 1e-4, 1)`` and ``Q = clip(1 - p, 1e-4, 1)``. The entry is an edge when the one-hot
    values of center and neighbour differ in class ``c``. ``edge`` is the mean of ``max(0, margin - KL)``
    over edge entries, ``non_edge`` the mean of ``KL`` over non-edge entries (0 for an empty set), and
    ``dec = 10^(-progress)`` when ``decay`` (else 1), ``progress`` the fraction of training done
    (``AffinityFieldLoss.set_progress``).
    """
    check_window("kernel_size", kernel_size)
    check_fraction("progress", progress)
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        if not bool(valid.any()):
            return zero_with_graph(x)
        p = torch.softmax(x, dim=1)
        big_p = p.clamp(AFFINITY_EPS, 1.0)
        big_q = (1.0 - p).clamp(AFFINITY_EPS, 1.0)
        y = one_hot(target, valid, x.shape[1], x.dtype)
        mask = valid.unsqueeze(1)  # [N, 1, H, W]

        edge_sum = non_edge_sum = x.new_zeros(())
        edge_count = non_edge_count = 0
        for dy, dx in affinity_offsets(kernel_size):
            # Neighbour maps; outside the image they are filled with values whose entries are dropped below.
            p_n, q_n = shift(big_p, dy, dx, 1.0), shift(big_q, dy, dx, 1.0)
            kl = p_n * torch.log(p_n / big_p) + q_n * torch.log(q_n / big_q)
            pair = mask & shift(mask, dy, dx, False)  # center and neighbour inside and valid
            if official_pairs:  # ... and the pixel on the opposite side
                pair = pair & shift(mask, -dy, -dx, False)
            differ = y != shift(y, dy, dx, 0.0)
            edge, non_edge = pair & differ, pair & ~differ  # [N, C, H, W]
            edge_sum = edge_sum + torch.where(edge, (margin - kl).clamp(min=0), 0.0).sum()
            non_edge_sum = non_edge_sum + torch.where(non_edge, kl, 0.0).sum()
            edge_count += int(edge.sum())
            non_edge_count += int(non_edge.sum())

        ce = F.cross_entropy(x, target, ignore_index=ignore_index)
        edge_term = edge_sum / max(edge_count, 1)
        non_edge_term = non_edge_sum / max(non_edge_count, 1)
        dec = 10.0 ** (-progress) if decay else 1.0
        return ce + dec * (lam_edge * edge_term + lam_nonedge * non_edge_term)


# --------------------------------------------------------------------------------------------------------------
# LAD (LAD paper, Sec. 3, Eqs. 2-5)
# --------------------------------------------------------------------------------------------------------------

def standardize(x: torch.Tensor, eps: float = LAD_EPS) -> torch.Tensor:
    """Standard score of each pixel's logit vector over the classes (LAD Sec. 3.1):
    ``(x_hat - mean_c) / (std_c + eps)``, population std. The variance is floored at the smallest normal
    number before the root: the value is unchanged (``std + eps`` is), but where all logits of a pixel are
    equal the std gets a zero subgradient instead of ``sqrt``'s infinite one (docs/fidelity.md)."""
    centered = x - x.mean(dim=1, keepdim=True)
    var = (centered**2).mean(dim=1, keepdim=True)
    std = var.clamp(min=torch.finfo(x.dtype).tiny).sqrt()
    return centered / (std + eps)


def selective_pool(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kernel_size: int,
                   ignore_index: int = 255) -> torch.Tensor:
    """The selective pooling of LAD Eq. 2 at every pixel::

        f(i, j) = (1 / xi) sum_(u, v) mu(i + u, j + v) w(u, v) x(i + u, j + v)

    over the ``kernel_size x kernel_size`` window, ``mu = 1`` where the neighbour carries the center's
    (valid) label, else 0 (outside the image and ignored pixels: 0), ``w = 2^(1 - max(|u|, |v|))`` (2 at
    the center, 1 on the first ring, 1/2 on the second, ...), and ``xi = sum mu`` the number of
    same-label pixels, center included. ``f`` is 0 at ignored centers (``xi = 0``)."""
    r = kernel_size // 2
    f = torch.zeros_like(x)
    xi = x.new_zeros((x.shape[0], 1) + tuple(x.shape[2:]))
    for u in range(-r, r + 1):
        for v in range(-r, r + 1):
            w = 2.0 ** (1 - max(abs(u), abs(v)))
            mu = ((shift(target, u, v, ignore_index) == target) & valid).unsqueeze(1).to(x.dtype)
            f = f + w * mu * shift(x, u, v, 0.0)
            xi = xi + mu
    return f / xi.clamp(min=1)


def _lad_local(x, target, valid, kernel_size, stride, ignore_index):
    """``(L_S, centers)`` on checked inputs: Eqs. 2-4 at every pixel, ``centers`` the valid pixels on the
    stride grid (rows and columns ``0, stride, 2 stride, ...``); ``L_S`` is 0 elsewhere."""
    f = selective_pool(standardize(x), target, valid, kernel_size, ignore_index)  # Sec. 3.1, Eq. 2
    local = F.cross_entropy(f, target, ignore_index=ignore_index, reduction="none")  # Eqs. 3-4
    on_grid = torch.zeros_like(valid)
    on_grid[:, ::stride, ::stride] = True
    centers = valid & on_grid
    return torch.where(centers, local, 0.0), centers


def check_lad(kernel_size, k, stride, pool="image") -> None:
    """The arguments of LAD (shared with ``LADLoss``)."""
    check_window("kernel_size", kernel_size)
    check_positive("stride", stride, integer=True)
    check_positive("k (the Minkowski exponent)", k)
    check_choice("pool", pool, LAD_POOLS)


def lad_local_losses(logits, target, kernel_size: int = 5, stride: int = 1, ignore_index: int = 255):
    """``(L_S [N, H, W], centers [N, H, W] bool)``: the local losses of LAD Eqs. 2-4 and the valid centers
    on the stride grid; ``L_S`` is 0 off them (``LADLoss.local_losses``)."""
    check_lad(kernel_size, 1.0, stride)
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        return _lad_local(x, target, valid, kernel_size, stride, ignore_index)


def lad_loss(logits, target, kernel_size: int = 5, k: float = 3.0, stride: int = 1, ignore_index: int = 255,
             pool: str = "image"):
    """LAD (Eq. 5, ``LADLoss``): the Minkowski pooling ``(mean L_S^k)^(1/k)`` of the local losses
    (:func:`lad_local_losses`) over the valid centers on the stride grid: of each image, then the mean over
    the images that have a valid center (``pool="image"``: "here we take one image as an input batch"), or
    of the whole batch at once (``pool="batch"``); a zero with a graph when there is none."""
    check_lad(kernel_size, k, stride, pool)
    with autocast_off(logits.device.type):
        x, target, valid = prepare(logits, target, ignore_index)
        local, centers = _lad_local(x, target, valid, kernel_size, stride, ignore_index)
        if not bool(centers.any()):
            return zero_with_graph(x)
        if pool == "batch":
            return local[centers].pow(k).mean().pow(1.0 / k)
        per_image = [local[n][centers[n]].pow(k).mean().pow(1.0 / k) for n in range(len(x)) if centers[n].any()]
        return torch.stack(per_image).mean()
