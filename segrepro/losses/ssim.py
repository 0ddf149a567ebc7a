"""SSIM loss between the sigmoid probabilities and the one-hot target (SSL paper Eqs. 7 and 9).

To read this loss against the paper, start with :func:`segrepro.losses.reference.ssim_loss`: the same loss in
plain autograd, equation by equation (``impl="reference"`` runs it). This module is its fast form, tested
against it in ``tests/test_losses_reference.py``; what each speed-up gained is in ``docs/performance.md``.
"""
from __future__ import annotations

import torch

from ._autograd import Precomputed, eager_forward, eager_terms
from ._chunks import gather_classes, one_hot_chunk, present_chunks, scatter_classes
from . import reference
from ._functional import IMPLEMENTATIONS, REDUCTIONS, check_choice, check_fraction, check_window, log_q
from ._stats import BORDERS, check_sigma, window_inside
from .base import SegmentationLoss

C1, C2, FORMS = reference.C1, reference.C2, reference.SSIM_FORMS


class SSIMLoss(SegmentationLoss):
    """``lam * BCE + (1 - lam) * L_ssim`` with ``L_ssim`` the mean of ``1 - S`` over valid (pixel, class) entries.

    ``S`` compares ``p = sigmoid(logits)`` with the one-hot map ``y`` of each
    class in a local window (as in :class:`SSLLoss`: Gaussian of ``sigma``,
    ``None`` for uniform, weighted population statistics over the in-image,
    non-ignored pixels, weights renormalized):

    - ``form="eq7"`` (Eq. 7): ``S = SSIM``
      ``= (2 mu_p mu_y + C1)(2 cov + C2) / ((mu_p^2 + mu_y^2 + C1)(var_p + var_y + C2))``;
    - ``form="eq9"`` (Eq. 9): ``S = S2 = (2 cov + C2) / (var_p + var_y + C2)``, the contrast-structure term,

    with ``C1 = 0.01^2``, ``C2 = 0.03^2``. Gradients flow through the
    statistics of ``p``. The value and its gradient are computed together in
    chunks of classes (the gradient of the window statistics is the same
    window applied to the per-center derivatives), so no autograd graph of the
    statistics is kept. The classes absent from an image (one-hot map 0, so
    ``mu_y = var_y = cov = 0``) take a closed form without the statistics that involve ``y``.

    ``border`` (``"renorm"``, ``"zero"``, ``"valid"``) is the convention of the
    image border (:mod:`segrepro.losses._stats`); with ``"valid"``, ``L_ssim`` is
    the mean over the valid entries whose window lies inside the image (0 if
    none). ``reduction`` is that of the BCE term, as in :class:`BCELoss`.
    """

    def __init__(self, window_size: int = 3, sigma: float | None = 1.5, form: str = "eq7", lam: float = 0.5,
                 ignore_index: int = 255, impl: str = "fast", border: str = "renorm", reduction: str = "pixel"):
        super().__init__()
        check_window("window_size", window_size)
        check_choice("impl", impl, IMPLEMENTATIONS)
        check_sigma(sigma)
        check_choice("form", form, FORMS)
        check_fraction("lam", lam)
        check_choice("border", border, BORDERS)
        check_choice("reduction", reduction, REDUCTIONS)
        self.window_size = window_size
        self.sigma = sigma
        self.form = form
        self.lam = float(lam)
        self.ignore_index = ignore_index
        self.impl = impl
        self.border = border
        self.reduction = reduction

    @torch.no_grad()
    def _sums(self, x, target, valid, with_grad: bool):
        """``(sum of BCE, sum of 1 - S, the BCE's and the SSIM's denominators, d objective / d x or None)``.
        The BCE is divided by the number of valid entries (the valid pixels with ``reduction="pixel"``), the
        sum of ``1 - S`` by that of the valid entries whose window the border convention keeps (at least 1);
        ``1 - S`` is summed as ``count - sum(S)`` over those."""
        count = int(valid.sum()) * x.shape[1]
        bce_count = count if self.reduction == "entry" else int(valid.sum())
        if self.border == "valid":
            count = int((valid & window_inside(*valid.shape[1:], self.window_size, valid.device)).sum()) * x.shape[1]
        ssim_count = max(count, 1)
        grad = torch.empty_like(x) if with_grad else None
        bce_sum = s_sum = 0.0
        for images, labels, stats, chunk in present_chunks(x, target, valid, self.window_size, self.sigma,
                                                           self.border):
            y = None
            if chunk.present:
                y = one_hot_chunk(labels, valid[images], chunk.positions, x.dtype, channels_last=True)
            bce, s, chunk_grad = self._chunk(gather_classes(x[images], chunk.classes), y, stats, bce_count,
                                             ssim_count, with_grad)
            bce_sum, s_sum = bce_sum + bce, s_sum + s
            if with_grad:
                scatter_classes(grad[images], chunk.classes, chunk_grad)
        return bce_sum, count - s_sum, bce_count, ssim_count, grad

    def _chunk(self, pm, y, stats, bce_count, ssim_count, with_grad):
        """One chunk of classes: its logits ``pm`` (overwritten) and one-hot map ``y`` (channels-last; None
        for classes absent from the chunk's images) to ``(sum of BCE, sum of S, d objective / d logits or None)``."""
        mask, scored = stats.mask_like(pm), stats.center_mask_like(pm)
        # Masked, then summed (docs/performance.md).
        bce_sum = -log_q(pm, y).mul_(mask).sum()
        pm.sigmoid_().mul_(mask)
        s_sum, dp, scale = self._absent(pm, stats, scored, with_grad) if y is None else (
            self._present(pm, y, stats, scored, with_grad))
        if not with_grad:
            return bce_sum, s_sum, None
        # Chain through the sigmoid (pm (1 - pm) is p (1 - p), 0 at ignored pixels), add the BCE gradient.
        sigmoid_grad = torch.addcmul(pm, pm, pm, value=-1)
        bce_grad = (pm if y is None else pm.sub_(y)).mul_(self.lam / bce_count)
        return bce_sum, s_sum, bce_grad.addcmul_(dp, sigmoid_grad, value=-scale * (1.0 - self.lam) / ssim_count)

    def _present(self, pm, y, stats, scored, with_grad):
        """``(sum of S, dS/dp / scale or None, scale)`` for a chunk of ``p`` (``pm``) and one-hot maps ``y``;
        ``S`` is summed over ``scored`` (the 0/1 map of the entries that count). Temporaries are dropped as
        soon as possible."""
        m1, b2 = stats.mean(pm), stats.mean(pm * pm)
        # B2 = var_p + var_y + C2 with var_y = mu_y - mu_y^2 for a binary map (SSL Eq. 16); S2 = A2 / B2.
        mu_y, s2 = stats.mean(y), stats.mean(pm * y)
        b2.addcmul_(m1, m1, value=-1).add_(mu_y).addcmul_(mu_y, mu_y, value=-1).add_(C2)
        s2.addcmul_(m1, mu_y, value=-1).mul_(2).add_(C2).div_(b2)
        if self.form == "eq7":
            c1 = pm.new_tensor(C1)
            b1 = torch.addcmul(c1, m1, m1).addcmul_(mu_y, mu_y)
            s1 = torch.addcmul(c1, m1, mu_y, value=2).div_(b1)
            s = s1 * s2
        else:
            s = s2
        s_sum = s.mul_(scored).sum()  # (the gradient factors below are 0 at ignored and dropped centers anyway)
        if not with_grad:
            return s_sum, None, 2.0
        # dS/d mean(p y) = 2 S1 / B2, dS/d mean(p^2) = -S / B2, dS/d mean(p) = 2 g1 below; and
        # d mean(v)_i / d v_j = window weight / weight sum_i. That division belongs to the adjoint of the local
        # mean; it is folded in here (the weight sum is infinite at ignored centers, where the factors become 0).
        weight_sum = stats.weight_sum_like(pm)
        r2 = b2.mul_(weight_sum).reciprocal_()
        g1 = (m1 * s2).sub_(mu_y)
        if self.form == "eq7":
            # (dS1 / d mean p) S2 / 2 = (mu_y - mean(p) S1) S2 / B1, over the adjoint's weight sum.
            dmu_s1 = mu_y.sub_(m1.mul_(s1)).mul_(s2).div_(b1.mul_(weight_sum))
            del b1
            g12 = s1.mul_(r2)
            g1.mul_(g12).add_(dmu_s1)
            del dmu_s1
        else:
            g12 = r2
            g1.mul_(g12)
        g2 = s.mul_(r2)
        del m1, mu_y, s2, b2, r2, s
        dp = stats.window_sum(g1).addcmul_(stats.window_sum(g2), pm, value=-1)
        del g1, g2
        return s_sum, dp.addcmul_(stats.window_sum(g12), y), 2.0

    def _absent(self, pm, stats, scored, with_grad):
        """:meth:`_present` for classes absent from the chunk's images, in closed form: ``y = 0``, so
        ``mu_y = var_y = cov = 0`` and ``S2 = C2 / B2``, ``S1 = C1 / B1`` with ``B1 = mu_p^2 + C1``,
        ``B2 = var_p + C2``. With ``S' = S / (C1 C2) = 1 / (B1 B2)`` (Eq. 7; ``S / C2 = 1 / B2``, Eq. 9):
        ``dS'/d mu_p = 2 mu_p S' (1 / B2 - 1 / B1)`` (Eq. 7; ``2 mu_p S' / B2``) and
        ``dS'/d mean(p^2) = -S' / B2``; each is divided by the weight sum as in :meth:`_present`."""
        m1, b2 = stats.mean(pm), stats.mean(pm * pm)
        r2 = b2.addcmul_(m1, m1, value=-1).add_(C2).reciprocal_()  # 1 / B2
        if self.form == "eq9":  # S' = 1 / B2
            scale, s = C2, r2 * scored
        else:  # S' = 1 / (B1 B2)
            r1 = torch.addcmul(pm.new_tensor(C1), m1, m1).reciprocal_()  # 1 / B1
            scale, s = C1 * C2, torch.mul(r1, r2).mul_(scored)
        s_sum = s.sum() * scale
        if not with_grad:
            return s_sum, None, 2.0 * scale
        t = s.div_(stats.weight_sum_like(pm))  # S' over the weight sum, 0 at ignored centers
        if self.form == "eq9":
            u = t.mul_(r2)
            d_mu = m1.mul_(u)
        else:
            u = t * r2
            d_mu = r2.sub_(r1).mul_(t).mul_(m1)
        return s_sum, stats.window_sum(d_mu).addcmul_(stats.window_sum(u), pm, value=-1), 2.0 * scale

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            return reference.ssim_loss(logits, target, self.window_size, self.sigma, self.form, self.lam,
                                       self.ignore_index, self.border, self.reduction)
        return eager_forward(self._value_and_grad, logits, target, self.ignore_index)

    def _value_and_grad(self, x, target, valid, with_grad: bool):
        bce_sum, ssim_sum, bce_count, ssim_count, grad = self._sums(x, target, valid, with_grad)
        backward = Precomputed(grad, lambda *inputs: self._sums(*inputs, with_grad=True)[-1])
        # lam * bce_sum / bce_count + (1 - lam) * ssim_sum / ssim_count with one division (the ratio is 1 when
        # the two counts agree, as by default)
        value = (self.lam * (ssim_count / bce_count) * bce_sum + (1.0 - self.lam) * ssim_sum) / ssim_count
        return value, (backward, (x, target, valid))

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"bce": BCE, "ssim": L_ssim}``, the two terms before ``lam`` (0 when no pixel is valid)."""
        return eager_terms(self._terms, logits, target, self.ignore_index, ("bce", "ssim"))

    def _terms(self, x, target, valid):
        bce_sum, ssim_sum, bce_count, ssim_count, _ = self._sums(x, target, valid, with_grad=False)
        return bce_sum / bce_count, ssim_sum / ssim_count
