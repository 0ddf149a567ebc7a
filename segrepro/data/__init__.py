"""Datasets and input pipelines.

Every dataset class takes ``(root, split, transform, **params)`` and yields
``(image float [3, H, W], label int64 [H, W])`` after ``transform``; it carries
``num_classes``, ``class_names`` and ``palette`` (one RGB triple per class).
``data.name`` picks the class from :data:`DATASETS`.
"""
from __future__ import annotations

import importlib
import inspect

from .transforms import build_transform

DATASETS = {
    "synthetic": "segrepro.data.synthetic:SyntheticSegmentation",
    "voc": "segrepro.data.voc:VOCSegmentation",
    "cityscapes": "segrepro.data.cityscapes:CityscapesSegmentation",
    "camvid": "segrepro.data.camvid:CamVidSegmentation",
}


def dataset_class(name: str):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset data.name={name!r}; valid: {sorted(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_dataset(data_cfg, split: str, train: bool):
    """The dataset of ``data_cfg`` for ``split``, with the training or validation pipeline."""
    cls = dataset_class(data_cfg.name)
    params = dict(data_cfg.params)
    valid = [p for p in inspect.signature(cls).parameters if p not in ("root", "split", "transform")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown data.params {unknown} for dataset {data_cfg.name!r}; valid: {valid}")
    dataset = cls(root=data_cfg.root, split=split, transform=build_transform(data_cfg, train), **params)
    if dataset.num_classes != data_cfg.num_classes:
        raise ValueError(
            f"data.num_classes={data_cfg.num_classes} but dataset {data_cfg.name!r} has "
            f"{dataset.num_classes} classes"
        )
    return dataset
