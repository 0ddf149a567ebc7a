"""Center loss (Wen et al., ECCV 2016) on per-pixel features, the center baseline of LAD Table 2."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._functional import autocast_off, compute_dtype, masked_mean
from .base import SegmentationLoss
from .cross_entropy import CrossEntropyLoss


class CenterLoss(SegmentationLoss):
    """Softmax cross entropy plus ``lam * 0.5 * mean ||f_i - c_{y_i}||^2`` over the
    valid pixels at the feature resolution.

    ``features [N, feat_dim, h, w]`` are the per-pixel features that feed the
    classifier; the target is brought to ``(h, w)`` by
    ``F.interpolate(mode="nearest")`` (source index ``floor(i * H / h)``).
    The class centers are a buffer ``centers [num_classes, feat_dim]``
    (zeros at start, saved in ``state_dict``), moved by :meth:`update_centers`
    after each optimizer step (:meth:`after_step`), never by the gradient.
    """

    needs_features = True

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5, lam: float = 3e-4,
                 ignore_index: int = 255):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("feat_dim", feat_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"CenterLoss: {name} must be a positive int, got {value!r} "
                                 "(feat_dim: null in a config is filled from the model's feature size)")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.alpha = alpha
        self.lam = lam
        self.ignore_index = ignore_index
        self.ce = CrossEntropyLoss(ignore_index)
        self.register_buffer("centers", torch.zeros(num_classes, feat_dim))

    def _features_and_labels(self, features: torch.Tensor, target: torch.Tensor):
        """Check ``features`` and return them with the target at their resolution and its valid mask."""
        if not torch.is_tensor(features) or features.dim() != 4 or not features.is_floating_point():
            raise ValueError(
                f"features must be a floating [N, feat_dim, h, w] tensor, got shape {tuple(getattr(features, 'shape', ()))}"
            )
        if features.shape[1] != self.feat_dim:
            raise ValueError(f"features have {features.shape[1]} channels, CenterLoss was built with feat_dim={self.feat_dim}")
        if target.dim() != 3 or features.shape[0] != target.shape[0]:
            raise ValueError(
                f"features batch {features.shape[0]} does not match target shape {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"target must hold integer class indices, got {target.dtype}")
        # float32 holds every label exactly; "nearest" picks source index floor(i * H / h).
        labels = F.interpolate(target.unsqueeze(1).float(), size=features.shape[2:], mode="nearest")
        labels = labels.squeeze(1).long()
        valid = labels != self.ignore_index
        bad = valid & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"target holds label {int(labels[bad][0])} outside 0..{self.num_classes - 1} "
                f"that is not ignore_index={self.ignore_index}"
            )
        return features.to(compute_dtype(features)), labels, valid

    def _center_term(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``0.5 * mean ||f_i - c_{y_i}||^2`` over the valid feature pixels (0 when none)."""
        f, labels, valid = self._features_and_labels(features, target)
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        c = self.centers.to(f.dtype)[safe].permute(0, 3, 1, 2)  # [N, D, h, w]
        return masked_mean(0.5 * (f - c).pow(2).sum(1), valid)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        with autocast_off(logits.device.type):
            ce = self.ce(logits, target)
            return ce + self.lam * self._center_term(features, target)

    def terms(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor) -> dict:
        """The two parts before weighting: ``ce`` and ``center`` (``0.5 * mean ||f - c||^2``)."""
        with autocast_off(logits.device.type):
            return {"ce": self.ce(logits, target), "center": self._center_term(features, target)}

    def after_step(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor) -> None:
        """The trainer's hook after each optimizer step: :meth:`update_centers` with that step's features."""
        self.update_centers(features, target)

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, target: torch.Tensor) -> None:
        """Wen et al. 2016 update, ``c_j <- c_j - alpha * sum_{i: y_i=j} (c_j - f_i) / (1 + n_j)``.

        The per-class counts ``n_j`` and feature sums are summed across the
        DDP ranks first, so every rank applies the same update.
        """
        f, labels, valid = self._features_and_labels(features.detach(), target)
        f = f.permute(0, 2, 3, 1)[valid].to(self.centers.dtype)  # [M, D]
        labels = labels[valid]
        stats = torch.zeros(self.num_classes, self.feat_dim + 1, dtype=self.centers.dtype, device=self.centers.device)
        stats[:, :-1].index_add_(0, labels, f)
        stats[:, -1] = torch.bincount(labels, minlength=self.num_classes).to(stats.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        sums, counts = stats[:, :-1], stats[:, -1:]
        self.centers.sub_(self.alpha * (counts * self.centers - sums) / (1.0 + counts))
