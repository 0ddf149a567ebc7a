"""The built-in synthetic dataset: determinism, classes, ignore band, imbalance, pipeline."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segrepro.config import CONFIG_DIR, DataConfig
from segrepro.data import build_dataset
from segrepro.data.synthetic import DOT, WIRE, SyntheticSegmentation

NUM_SCENES = 40


@pytest.fixture(scope="module")
def labels():
    """The labels of the first NUM_SCENES training scenes."""
    dataset = SyntheticSegmentation(split="train")
    return [dataset[i][1] for i in range(NUM_SCENES)]


def test_same_index_gives_identical_arrays_and_seed_split_index_change_them():
    dataset = SyntheticSegmentation(split="train", seed=3)
    image, label = dataset[5]
    again_image, again_label = SyntheticSegmentation(split="train", seed=3)[5]
    assert image.dtype == np.uint8 and image.shape == (160, 160, 3)
    assert label.dtype == np.uint8 and label.shape == (160, 160)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    for other in (SyntheticSegmentation(split="train", seed=4)[5],
                  SyntheticSegmentation(split="val", seed=3)[5],
                  dataset[6]):
        assert not np.array_equal(image, other[0])


def test_sizes_from_num_samples_and_image_size():
    assert len(SyntheticSegmentation(split="train")) == 2000
    assert len(SyntheticSegmentation(split="val")) == 100
    assert len(SyntheticSegmentation(split="val", num_samples={"train": 7, "val": 3})) == 3
    small = SyntheticSegmentation(split="train", num_samples=5, image_size=(64, 96))
    assert len(small) == 5 and small[4][0].shape == (64, 96, 3)
    with pytest.raises(IndexError):
        small[5]


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        SyntheticSegmentation(split="test")


def test_labels_are_classes_or_ignore_and_every_class_appears(labels):
    values = set(np.unique(np.concatenate([label.ravel() for label in labels])).tolist())
    assert values == set(range(SyntheticSegmentation.num_classes)) | {255}
    assert len(SyntheticSegmentation.class_names) == len(SyntheticSegmentation.palette) == 6


def test_ignore_band_is_thin_and_sits_on_object_borders(labels):
    with_band = [label for label in labels if (label == 255).any()]
    assert len(with_band) >= NUM_SCENES // 4
    near_object, total = 0, 0
    for label in with_band:
        ignore = (label == 255).astype(np.uint8)
        # A band 2-3 px wide (two bands side by side: < 7 px) vanishes under a 7x7 erosion.
        assert not cv2.erode(ignore, np.ones((7, 7), np.uint8)).any()
        objects = ((label > 0) & (label < 255)).astype(np.uint8)
        touches_object = cv2.dilate(objects, np.ones((7, 7), np.uint8)).astype(bool)
        near_object += int((touches_object & ignore.astype(bool)).sum())
        total += int(ignore.sum())
    assert near_object / total > 0.9


def test_background_dominates_and_thin_and_small_classes_are_rare(labels):
    counts = np.bincount(np.concatenate([label.ravel() for label in labels]), minlength=256)
    share = counts[:6] / counts[:6].sum()
    assert share[0] > 0.6
    assert 0 < share[WIRE] < 0.05
    assert 0 < share[DOT] < 0.02
    assert share[DOT] < share[WIRE] < min(share[1:4])


def test_yaml_config_builds_train_and_val_pipelines():
    yaml_cfg = OmegaConf.load(Path(CONFIG_DIR) / "data" / "synthetic.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), yaml_cfg)
    cfg.dataset.num_samples = {"train": 4, "val": 2}
    train = build_dataset(cfg, cfg.train_split, train=True)
    val = build_dataset(cfg, cfg.val_split, train=False)
    assert (len(train), len(val)) == (4, 2)
    image, label = train[0]
    assert image.dtype == torch.float32 and image.shape == (3, cfg.crop_size, cfg.crop_size)
    assert label.dtype == torch.int64 and label.shape == (cfg.crop_size, cfg.crop_size)
    image, label = val[1]
    assert image.shape == (3, 160, 160) and label.shape == (160, 160)
    raw_label = SyntheticSegmentation(split="val")[1][1]
    np.testing.assert_array_equal(label.numpy(), raw_label)
