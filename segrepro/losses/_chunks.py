"""Chunks of classes and groups of images: how the fast SSL, SSIM, affinity and LAD paths walk the batch.

The windowed losses never hold their temporaries for all ``C`` classes at
once: they work through ``CLASS_CHUNK`` classes at a time, in channels-last
copies (what the depthwise window convolutions want), present classes first
(an absent class's one-hot map is 0, so its statistics are known), and through
the batch in groups of images (:func:`image_groups`, :func:`batch_strategy`).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from ._stats import LocalStats

# Classes processed at once: bounds the temporaries to a fraction of the logits (docs/performance.md).
CLASS_CHUNK = 8

BATCH_STRATEGIES = ("auto", "per_image", "whole_batch")
_batch_strategy = "auto"


@contextlib.contextmanager
def batch_strategy(name: str):
    """Within the block, the windowed losses take the batch ``per_image`` or as a ``whole_batch``; ``auto``
    (the default) is per image on CPU and the whole batch on other devices. Both give the same values up to
    rounding; the tests run each on CPU."""
    global _batch_strategy
    if name not in BATCH_STRATEGIES:
        raise ValueError(f"batch strategy must be one of {BATCH_STRATEGIES}, got {name!r}")
    previous, _batch_strategy = _batch_strategy, name
    try:
        yield
    finally:
        _batch_strategy = previous


def image_groups(x: torch.Tensor) -> list:
    """The batch as the slices of images the chunked losses work through: one image at a time (smaller
    temporaries that stay in cache, the CPU default) or the whole batch (fewer, larger kernels: the default
    on a GPU); :func:`batch_strategy` chooses."""
    per_image = x.device.type == "cpu" if _batch_strategy == "auto" else _batch_strategy == "per_image"
    if per_image:
        return [slice(n, n + 1) for n in range(x.shape[0])]
    return [slice(None)]


def class_chunks(num_classes: int, start: int = 0):
    """Slices of ``CLASS_CHUNK`` classes covering ``start..num_classes-1``."""
    return [slice(first, min(first + CLASS_CHUNK, num_classes)) for first in range(start, num_classes, CLASS_CHUNK)]


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
        self.labels = rank.index_select(0, labels.flatten()).view_as(labels)
        num_present, order = int(present.sum()), order.tolist()
        self.chunks = [ClassChunk(s, order[s], True) for s in class_chunks(num_present)] + [
            ClassChunk(s, order[s], False) for s in class_chunks(num_classes, num_present)]


def present_chunks(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, size: int, sigma,
                   border: str = "renorm"):
    """For each group of images (:func:`image_groups`) and each chunk of classes, present ones first
    (:class:`PresentFirst`, per group): ``(images, labels, stats, chunk)`` with ``images`` the group's
    slice of the batch, ``labels`` its labels in the chunks' order and ``stats`` its :class:`LocalStats`
    (window ``size``, ``sigma``, ``border``)."""
    for images in image_groups(x):
        order = PresentFirst(target[images], valid[images], x.shape[1])
        stats = LocalStats(size, sigma, valid[images], x.dtype, border)
        for chunk in order.chunks:
            yield images, order.labels, stats, chunk


def gather_classes(x: torch.Tensor, classes: list) -> torch.Tensor:
    """The classes ``classes`` of ``x`` as a new channels-last tensor, selected along the last axis of
    ``x``'s channels-last view."""
    index = torch.tensor(classes, device=x.device)
    return x.permute(0, 2, 3, 1).index_select(3, index).permute(0, 3, 1, 2)


def scatter_classes(dst: torch.Tensor, classes: list, src: torch.Tensor) -> None:
    """``dst[:, classes] = src``, one copy per class (docs/performance.md: ``index_copy_`` is slower)."""
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
