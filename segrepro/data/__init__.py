"""Datasets and input pipelines.

Every dataset class takes ``(root, split, transform, **arguments)`` and yields
``(image float [3, H, W], label int64 [H, W])`` after ``transform``; it carries
``num_classes``, ``class_names`` and ``palette`` (one RGB triple per class).
``data.dataset`` names the class by ``_target_`` with its arguments (any importable
class with that signature plugs in); ``data.root`` fills ``root`` unless the node sets it.
A dataset whose ``labelled`` is False (a test split without labels, e.g. ``data=voc_test``)
yields placeholder labels: only ``segrepro predict`` reads it.
"""
from __future__ import annotations

from ..config import instantiate
from .camvid import CamVidSegmentation
from .cityscapes import CityscapesSegmentation
from .io import DatasetError
from .synthetic import SyntheticSegmentation
from .transforms import build_transform
from .voc import VOCSegmentation, VOCTestImages

__all__ = ["build_dataset", "build_transform", "CamVidSegmentation", "CityscapesSegmentation",
           "SyntheticSegmentation", "VOCSegmentation", "VOCTestImages"]

SET_BY_BUILD = {"split": "data.train_split / data.val_split", "transform": "the data.* pipeline keys"}


def build_dataset(data_cfg, split: str, train: bool, need_labels: bool = True):
    """The dataset of ``data_cfg`` for ``split``, with the training or validation pipeline; one without
    labels is an error unless ``need_labels`` is False (``segrepro predict``)."""
    node = data_cfg.dataset
    for name, source in SET_BY_BUILD.items():
        if node is not None and name in node:
            raise ValueError(f"data.dataset.{name} cannot be set: it comes from {source}")
    dataset = instantiate(node, "data.dataset", root=data_cfg.root, split=split,
                          transform=build_transform(data_cfg, train))
    if dataset.num_classes != data_cfg.num_classes:
        raise ValueError(
            f"data.num_classes={data_cfg.num_classes} but {node['_target_']} ({data_cfg.name!r}) has "
            f"{dataset.num_classes} classes"
        )
    if need_labels and not getattr(dataset, "labelled", True):
        raise DatasetError(f"data={data_cfg.name}, split {split!r}: {node['_target_']} has no labels, so it cannot be "
                           "trained or evaluated on; `segrepro predict checkpoint=PATH data=...` writes a "
                           "prediction for each of its images")
    return dataset
