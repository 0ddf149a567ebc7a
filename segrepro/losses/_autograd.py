"""Autograd plumbing of the losses that work out their gradient along with their value (SSL, SSIM, affinity).

Such a loss computes, under ``no_grad``, its value and what it needs for its
gradient w.r.t. the logits; :func:`eager_forward` returns the value attached to
that gradient, so autograd keeps no graph of the window statistics. Each of
these losses has a plain autograd twin in :mod:`segrepro.losses.reference`,
and the tests hold one against the other.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._functional import autocast_off, prepare, zero_with_graph


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

    The first backward gives ``grad`` to autograd and keeps no reference to it, so autograd needs no copy
    and, for the usual ``grad_output`` of 1 on CPU, no product either. A later backward through a retained
    graph computes the gradient again with ``recompute(x, target, valid)``."""

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
