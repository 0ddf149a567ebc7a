"""Evaluation: predictions at the label's original resolution, a confusion matrix summed over ranks.

In distributed runs each rank takes every ``world_size``-th image (no sampler
padding), so every validation image is counted exactly once and the reduced
matrix equals the single-process one.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..metrics import ConfusionMatrix
from .distributed import DistInfo


def shard(dataset, rank: int, world_size: int):
    """This rank's share of ``dataset``: indices ``rank, rank + world_size, ...``."""
    return Subset(dataset, range(rank, len(dataset), world_size))


class Evaluator:
    """Evaluates a model on ``dataset`` with the settings of the run config ``cfg`` (``data.num_classes``,
    ``data.ignore_index``, ``data.val_batch_size``, ``data.num_workers``, ``trainer.progress``)."""

    def __init__(self, cfg, dataset, dist_info: DistInfo, autocast=contextlib.nullcontext):
        data, device = cfg.data, dist_info.device
        self.dataset = dataset
        self.class_names = list(getattr(dataset, "class_names", range(data.num_classes)))
        self.loader = DataLoader(shard(dataset, dist_info.rank, dist_info.world_size),
                                 batch_size=data.val_batch_size, shuffle=False, num_workers=data.num_workers,
                                 pin_memory=device.type == "cuda",
                                 generator=torch.Generator())  # leaves the global RNG untouched
        self.num_classes = data.num_classes
        self.ignore_index = data.ignore_index
        self.device = device
        self.autocast = autocast
        self.progress = cfg.trainer.progress and dist_info.is_main

    @torch.no_grad()
    def run(self, model) -> tuple[dict, ConfusionMatrix, tuple]:
        """Evaluate ``model`` (put in eval mode, restored afterwards); return the metrics, the
        reduced confusion matrix and the first batch ``(images, labels, predictions)`` for display."""
        was_training = model.training
        model.eval()
        matrix = ConfusionMatrix(self.num_classes, self.ignore_index)
        first = None
        for images, labels in tqdm(self.loader, desc="eval", leave=False, disable=not self.progress):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with self.autocast():
                logits = model(images)
            pred = logits.argmax(1)
            matrix.update(pred, labels)
            if first is None:
                first = (images.cpu(), labels.cpu(), pred.cpu())
        matrix.all_reduce()
        model.train(was_training)
        return matrix.compute(), matrix, first
