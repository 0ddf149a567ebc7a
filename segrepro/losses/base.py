"""The loss protocol: every hook the trainer calls on a loss, with do-nothing defaults.

Each training step the trainer calls, on any loss::

    loss.set_progress(step / max_iters)        # before the forward
    value = loss(*inputs)                      # inputs = (logits, target) or, with needs_features,
                                               #          (logits, target, features)
    loss.after_step(*inputs)                   # after the optimizer step (detached inputs, no grad)
    loss.terms(*inputs)                        # when logging, after that (detached inputs, no grad)

A new loss subclasses :class:`SegmentationLoss`, overrides ``forward`` and the
hooks it needs, and gets a ``configs/loss/<name>.yaml`` whose ``_target_``
names the class; nothing else is registered anywhere. Its constructor
arguments are the YAML's keys; an argument the YAML leaves null or absent is
filled from the training context when it has one of these names:
``feat_dim`` (the model's feature size), ``num_classes``, ``ignore_index``.
"""
from __future__ import annotations

import torch
from torch import nn


class SegmentationLoss(nn.Module):
    """Base of every loss in :mod:`segrepro.losses`; the hooks below are what a loss may have.

    ``needs_features``: the trainer also passes the per-pixel features that feed the classifier
    (``[N, feat_dim, h, w]``) as a third argument to ``forward``, ``terms`` and ``after_step``.
    """

    needs_features: bool = False

    def set_progress(self, fraction: float) -> None:
        """The fraction of training done, in ``[0, 1]``, before each step's forward (e.g. a decaying weight)."""

    def terms(self, logits: torch.Tensor, target: torch.Tensor, *features) -> dict:
        """Named scalars to log (the loss's parts before weighting, statistics); none by default."""
        return {}

    def after_step(self, logits: torch.Tensor, target: torch.Tensor, *features) -> None:
        """After each optimizer step, with that step's detached inputs (e.g. the center loss's update)."""
