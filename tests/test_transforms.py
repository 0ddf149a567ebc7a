"""The training and validation pipelines: shapes, label values, image/label alignment, padding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import maximum_filter, minimum_filter

from segrepro.config import DataConfig
from segrepro.data.camvid import CamVidSegmentation
from segrepro.data.transforms import build_transform
from tests.test_data_camvid import REAL_CAMVID, needs_real_camvid

IGNORE = 255
# One colour per label value (the ignore band too): the label is encoded in the image.
COLOURS = {0: (20, 200, 40), 1: (230, 30, 90), 2: (60, 60, 250), 3: (250, 250, 10), IGNORE: (140, 0, 200)}


def data_config(**overrides) -> DataConfig:
    return DataConfig(**{"crop_size": 24, "scale_range": [0.5, 2.0], **overrides})


def blocks(height=32, width=40) -> tuple:
    """Rectangular class blocks (left-right asymmetric) with an ignore band; image = label colour."""
    label = np.zeros((height, width), np.uint8)
    label[:, 14:] = 1
    label[18:, 6:30] = 2
    label[3:12, 30:] = 3
    label[:, 24:26] = IGNORE
    image = np.zeros((height, width, 3), np.uint8)
    for value, colour in COLOURS.items():
        image[label == value] = colour
    return image, label


def to_uint8(image, cfg) -> np.ndarray:
    """Undo the normalization: float [3, H, W] -> HxWx3 in 0..255."""
    pixels = image.numpy().transpose(1, 2, 0) * np.array(cfg.std) + np.array(cfg.mean)
    return pixels * 255.0


def test_training_pipeline_keeps_image_and_label_aligned():
    cfg = data_config()
    transform = build_transform(cfg, train=True)
    image, label = blocks()
    mean_pixel = 255.0 * np.array(cfg.mean)
    flips = set()
    for seed in range(200):
        transform.reseed(seed)
        out_image, out_label = transform(image, label)
        assert out_image.shape == (3, 24, 24) and out_label.shape == (24, 24)
        assert out_image.dtype.is_floating_point and str(out_label.dtype) == "torch.int64"
        pixels, labels = to_uint8(out_image, cfg), out_label.numpy()
        assert set(np.unique(labels).tolist()) <= set(COLOURS)  # nearest: no blended label values
        # where the 3x3 neighbourhood has one label, the colour is that label's (or the pad's)
        uniform = maximum_filter(labels, 3) == minimum_filter(labels, 3)
        uniform[[0, -1], :] = uniform[:, [0, -1]] = False  # the crop's edge has no outer neighbours
        for value, colour in COLOURS.items():
            region = uniform & (labels == value)
            if not region.any():
                continue
            distance = np.abs(pixels[region] - np.array(colour)).max(axis=1)
            if value == IGNORE:  # an ignore pixel is the ignore band or padding (mean pixel)
                distance = np.minimum(distance, np.abs(pixels[region] - mean_pixel).max(axis=1))
            assert distance.max() < 2.0, (seed, value)
        # class 3 sits on the right of class 1's rows: a flipped crop has it left of them
        rows = [r for r in range(24) if {1, 3} <= set(labels[r].tolist())]
        if rows:
            row = labels[rows[0]].tolist()
            flips.add(row.index(3) < row.index(1))
    assert flips == {True, False}


def test_labels_stay_in_the_valid_set_on_real_values():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 5, 20, IGNORE], np.uint8), size=(50, 45))
    image = rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)
    transform = build_transform(data_config(crop_size=33, scale_range=[0.7, 1.9]), train=True)
    for seed in range(10):
        transform.reseed(seed)
        assert set(np.unique(transform(image, label)[1].numpy()).tolist()) <= {0, 5, 20, IGNORE}


def test_small_image_is_padded_bottom_right_with_mean_and_ignore():
    cfg = data_config(crop_size=24, scale_range=[1.0, 1.0], flip=False)
    image, label = blocks(height=10, width=15)
    out_image, out_label = build_transform(cfg, train=True)(image, label)
    pixels = to_uint8(out_image, cfg)
    np.testing.assert_allclose(pixels[:10, :15], image, atol=0.5)
    np.testing.assert_array_equal(out_label[:10, :15].numpy(), label)
    assert (out_label[10:, :] == IGNORE).all() and (out_label[:, 15:] == IGNORE).all()
    assert np.abs(out_image[:, 10:, 15:].numpy()).max() < 0.01  # the mean pixel normalizes to ~0


def test_scale_range_bounds_the_output_before_cropping():
    image, label = blocks(height=20, width=20)
    big = data_config(crop_size=100, scale_range=[2.0, 2.0], flip=False)
    out_label = build_transform(big, train=True)(image, label)[1].numpy()
    assert (out_label[:40, :40] != IGNORE).sum() > 0.8 * 1600 and (out_label[40:, :] == IGNORE).all()
    np.testing.assert_array_equal(out_label[:40:2, :40:2], label)


def test_reseed_makes_augmentation_reproducible():
    transform = build_transform(data_config(), train=True)
    image, label = blocks()
    draws = []
    for seed in (7, 7, 8):
        transform.reseed(seed)
        draws.append(transform(image, label)[1].numpy())
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_validation_keeps_the_original_size():
    cfg = data_config()
    image, label = blocks(height=37, width=51)
    out_image, out_label = build_transform(cfg, train=False)(image, label)
    assert out_image.shape == (3, 37, 51)
    np.testing.assert_array_equal(out_label.numpy(), label)
    np.testing.assert_allclose(to_uint8(out_image, cfg), image, atol=0.5)


@pytest.mark.parametrize("overrides, key", [({"scale_range": [1.5, 0.5]}, "data.scale_range"),
                                            ({"crop_size": 0}, "data.crop_size")])
def test_bad_settings_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        build_transform(data_config(**overrides), train=True)


@needs_real_camvid
def test_pipeline_on_real_camvid():
    cfg = data_config(crop_size=161, num_classes=11)
    dataset = CamVidSegmentation(REAL_CAMVID, "train", transform=build_transform(cfg, train=True), scale=0.5)
    dataset.transform.reseed(0)
    image, label = dataset[5]
    assert image.shape == (3, 161, 161) and label.shape == (161, 161)
    assert set(np.unique(label.numpy()).tolist()) <= set(range(11)) | {IGNORE}
    assert Path(dataset.pairs[5][0]).exists()
