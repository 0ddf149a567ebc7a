"""Cityscapes dataset on miniature trees in the real formats.

``make_cityscapes_tree`` and ``prepared_cityscapes`` are also used by test_prepare_cityscapes.py
and test_experiments.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segrepro.data.cityscapes import CityscapesSegmentation
from segrepro.data.io import DatasetError
from tests.test_data_voc import load_script

prepare_cityscapes = load_script("prepare_cityscapes")
SIZE = (18, 34)  # height, width
FRAMES = {"train": [("aachen", 19), ("bochum", 21)], "val": [("frankfurt", 294)]}


def label_ids(offset: int) -> np.ndarray:
    """Every official label id 0..33 appears; the layout shifts with ``offset``."""
    return ((np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) + offset) % 34).astype(np.uint8)


def make_cityscapes_tree(root: Path) -> Path:
    """``leftImg8bit/`` and ``gtFine/`` with ``*_labelIds.png`` (as in the official zips)."""
    rng = np.random.default_rng(0)
    for split, frames in FRAMES.items():
        for offset, (city, frame) in enumerate(frames):
            stem = f"{city}_000000_{frame:06d}"
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids(offset)).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    return root


def prepared_cityscapes(root: Path) -> Path:
    make_cityscapes_tree(root)
    assert prepare_cityscapes.main(["--root", str(root)]) == 0
    return root


def test_dataset_reads_train_ids(tmp_path):
    root = prepared_cityscapes(tmp_path / "cityscapes")
    train = CityscapesSegmentation(root, "train")
    assert len(train) == 2 and len(CityscapesSegmentation(root, "val")) == 1
    image, label = train[1]
    assert image.shape == (*SIZE, 3)
    ids = label_ids(1)
    assert np.all(label[ids == 26] == 13) and np.all(label[ids == 4] == 255)
    assert CityscapesSegmentation.num_classes == len(CityscapesSegmentation.class_names) == 19


def test_dataset_without_train_ids_names_the_prepare_command(tmp_path):
    root = make_cityscapes_tree(tmp_path / "cityscapes")
    with pytest.raises(DatasetError, match="labelTrainIds.png") as error:
        CityscapesSegmentation(root, "train")
    assert f"prepare_cityscapes.py --root {root}" in str(error.value)


def test_missing_split_folder_is_named(tmp_path):
    root = prepared_cityscapes(tmp_path / "cityscapes")
    with pytest.raises(DatasetError, match="leftImg8bit/test"):
        CityscapesSegmentation(root, "test")
