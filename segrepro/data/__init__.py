"""Datasets and input pipelines.

Every dataset class takes ``(root, split, transform, **arguments)`` and yields
``(image float [3, H, W], label int64 [H, W])`` after ``transform``; it carries
``num_classes``, ``class_names`` and ``palette`` (one RGB triple per class).
``data.dataset`` names the class by ``_target_`` with its arguments (any importable
class with that signature plugs in); ``data.root`` fills ``root`` unless the node sets it.
"""
from __future__ import annotations

from ..config import instantiate
from .camvid import CamVidSegmentation
from .cityscapes import CityscapesSegmentation
from .synthetic import SyntheticSegmentation
from .transforms import build_transform
from .voc import VOCSegmentation

__all__ = ["build_dataset", "build_transform", "CamVidSegmentation", "CityscapesSegmentation",
           "SyntheticSegmentation", "VOCSegmentation"]

SET_BY_BUILD = {"split": "data.train_split / data.val_split", "transform": "the data.* pipeline keys"}


def build_dataset(data_cfg, split: str, train: bool):
    """The dataset of ``data_cfg`` for ``split``, with the training or validation pipeline."""
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
    return dataset
