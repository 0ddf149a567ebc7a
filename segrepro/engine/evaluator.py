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


def shard(dataset, rank: int, world_size: int):
    """This rank's share of ``dataset``: indices ``rank, rank + world_size, ...``."""
    return Subset(dataset, range(rank, len(dataset), world_size))


class Evaluator:
    def __init__(self, dataset, num_classes: int, ignore_index: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, batch_size: int = 1, num_workers: int = 0,
                 autocast=contextlib.nullcontext, progress: bool = True):
        self.loader = DataLoader(shard(dataset, rank, world_size), batch_size=batch_size, shuffle=False,
                                 num_workers=num_workers, pin_memory=device.type == "cuda",
                                 generator=torch.Generator())  # leaves the global RNG untouched
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = device
        self.autocast = autocast
        self.progress = progress and rank == 0

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
