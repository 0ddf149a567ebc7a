"""SSIM loss between the sigmoid probabilities and the one-hot target (SSL paper Eqs. 7 and 9)."""
from __future__ import annotations

import torch
from torch import nn

from ._functional import autocast_off, check_window, prepare, zero_with_graph
from ._window import LocalStats, attach_grad, channels_last_chunk, check_sigma, class_chunks, log_q, one_hot_chunk

C1 = 0.01**2
C2 = 0.03**2
FORMS = ("eq7", "eq9")


class SSIMLoss(nn.Module):
    """``lam * BCE + (1 - lam) * L_ssim`` with ``L_ssim`` the mean of ``1 - S`` over valid (pixel, class) entries.

    ``S`` compares ``p = sigmoid(logits)`` with the one-hot map ``y`` of each
    class in a local window (as in :class:`SSLLoss`: Gaussian of ``sigma``,
    ``None`` for uniform, weighted population statistics over the in-image,
    non-ignored pixels, weights renormalized):

    - ``form="eq7"`` (Eq. 7): ``S = SSIM = (2 mu_p mu_y + C1)(2 cov + C2) / ((mu_p^2 + mu_y^2 + C1)(var_p + var_y + C2))``;
    - ``form="eq9"`` (Eq. 9): ``S = S2 = (2 cov + C2) / (var_p + var_y + C2)``, the contrast-structure term,

    with ``C1 = 0.01^2``, ``C2 = 0.03^2``. Gradients flow through the
    statistics of ``p``. The value and its gradient are computed together in
    chunks of classes (the gradient of the window statistics is the same
    window applied to the per-center derivatives), so no autograd graph of the
    statistics is kept.
    """

    def __init__(self, window_size: int = 3, sigma: float | None = 1.5, form: str = "eq7", lam: float = 0.5,
                 ignore_index: int = 255):
        super().__init__()
        check_window("window_size", window_size)
        check_sigma(sigma)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {lam!r}")
        self.window_size = window_size
        self.sigma = sigma
        self.form = form
        self.lam = float(lam)
        self.ignore_index = ignore_index

    @torch.no_grad()
    def _sums(self, x, target, valid, with_grad: bool):
        """``(sum of BCE, sum of 1 - S, number of valid entries, d objective / d x or None)``."""
        stats = LocalStats(self.window_size, self.sigma, valid, x.dtype)
        count = int(valid.sum()) * x.shape[1]
        grad = torch.empty_like(x) if with_grad else None
        bce_sum = ssim_sum = 0.0
        for classes in class_chunks(x.shape[1]):
            bce, ssim = self._chunk(x, target, valid, classes, stats, count, None if grad is None else grad[:, classes])
            bce_sum, ssim_sum = bce_sum + bce, ssim_sum + ssim
        return bce_sum, ssim_sum, count, grad

    def _chunk(self, x, target, valid, classes, stats, count, grad):
        """One chunk of classes (channels-last): ``(sum of BCE, sum of 1 - S)``; writes the gradient of the
        objective into ``grad`` (a view) unless it is None. Temporaries are dropped as soon as possible."""
        xc, y, mask = channels_last_chunk(x, classes), one_hot_chunk(target, valid, classes, x.dtype, True), stats.mask
        bce_sum = -log_q(xc, y).mul_(mask).sum()
        pm = xc.sigmoid_().mul_(mask)
        del xc
        mu_y = stats.mean(y)
        m1 = stats.mean(pm)
        # var_p + var_y + C2, with var_y = mu_y - mu_y^2 for a binary map (SSL Eq. 16).
        b2 = stats.mean(pm * pm).addcmul_(m1, m1, value=-1).add_(mu_y).addcmul_(mu_y, mu_y, value=-1).add_(C2)
        s2 = stats.mean(pm * y).addcmul_(m1, mu_y, value=-1).mul_(2).add_(C2).div_(b2)
        if self.form == "eq7":
            b1 = (m1 * m1).addcmul_(mu_y, mu_y).add_(C1)
            s1 = (m1 * mu_y).mul_(2).add_(C1).div_(b1)
            s = s1 * s2
        else:
            s = s2
        ssim_sum = (1.0 - s).mul_(mask).sum()
        if grad is None:
            return bce_sum, ssim_sum
        # d S / d (mean p, mean p^2, mean p*y) at each center, times d objective / d S = -(1 - lam) / count.
        k = (1.0 - self.lam) / count
        r2 = b2.reciprocal_()
        d1 = (m1 * s2).sub_(mu_y).mul_(r2)  # (d S2 / d mean p) / 2
        if self.form == "eq7":
            d1.mul_(s1).add_(mu_y.sub_(m1.mul_(s1)).mul_(s2).div_(b1))
            del b1
        del m1, mu_y, s2
        d12 = s1.mul_(r2) if self.form == "eq7" else r2.clone()  # (d S / d mean p*y) / 2
        dp = stats.adjoint_(d12.mul_(-2.0 * k)).mul_(y)
        del d12
        if self.form == "eq7":
            del s1
        dp.addcmul_(stats.adjoint_(s.mul_(r2).mul_(k)), pm, value=2.0)  # d S / d mean p^2 = -S / B2
        del s, r2, b2
        dp.add_(stats.adjoint_(d1.mul_(-2.0 * k)))
        del d1
        # Chain through the mask and the sigmoid (pm (1 - pm) = p (1 - p) mask), add the BCE term's gradient.
        dp.mul_(torch.addcmul(pm, pm, pm, value=-1)).add_(pm.sub_(y), alpha=self.lam / count).mul_(mask)
        grad.copy_(dp)
        return bce_sum, ssim_sum

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return zero_with_graph(x)
            with_grad = torch.is_grad_enabled() and x.requires_grad
            bce_sum, ssim_sum, count, grad = self._sums(x, target, valid, with_grad)
            value = (self.lam * bce_sum + (1.0 - self.lam) * ssim_sum) / count
            return attach_grad(x, value, grad) if with_grad else value

    @torch.no_grad()
    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"bce": BCE, "ssim": L_ssim}``, the two means before ``lam`` (0 when no pixel is valid)."""
        with autocast_off(logits.device.type):
            x, target, valid = prepare(logits, target, self.ignore_index)
            if not bool(valid.any()):
                return {"bce": x.new_zeros(()), "ssim": x.new_zeros(())}
            bce_sum, ssim_sum, count, _ = self._sums(x, target, valid, with_grad=False)
            return {"bce": bce_sum / count, "ssim": ssim_sum / count}
