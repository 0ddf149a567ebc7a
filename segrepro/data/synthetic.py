"""The built-in synthetic dataset: procedurally generated scenes, no files on disk.

Each sample is drawn on the fly from ``np.random.default_rng([seed, split id, index])``,
so it is the same every time and differs between splits. A scene is a smooth,
noisy background with a few occluding objects of five classes:

* ``disc``: ellipses, mostly with a linear colour gradient;
* ``box``: rotated rectangles, mostly striped;
* ``triangle``: triangles, mostly checkered;
* ``wire``: thin (1-3 px) straight or bent lines running across the scene;
* ``dot``: tiny blobs (radius 2-5 px).

Colours come from overlapping per-class hue ranges and textures are only
*preferred* per class, so colour alone does not tell the class: shape and
texture matter. Background dominates the pixels; wires and dots are rare.
Later objects overwrite earlier ones (occlusion). As in Pascal VOC, about half
of the large objects get a 2-3 px border band labelled ``ignore_index``.
Finally the image is slightly blurred and Gaussian pixel noise is added.
"""
from __future__ import annotations

import colorsys
from collections.abc import Mapping

import cv2
import numpy as np

DEFAULT_NUM_SAMPLES = {"train": 2000, "val": 100}
SPLIT_IDS = {"train": 0, "val": 1}

BACKGROUND, DISC, BOX, TRIANGLE, WIRE, DOT = range(6)
LARGE_CLASSES = (DISC, BOX, TRIANGLE)
TEXTURES = ("flat", "gradient", "stripes", "checker")
# Per class: probability of each texture in TEXTURES (the preferred one at 0.7).
TEXTURE_PROBS = {
    DISC: (0.1, 0.7, 0.1, 0.1),
    BOX: (0.1, 0.1, 0.7, 0.1),
    TRIANGLE: (0.1, 0.1, 0.1, 0.7),
    WIRE: (1.0, 0.0, 0.0, 0.0),
    DOT: (1.0, 0.0, 0.0, 0.0),
}
# Per class: centre of the hue range (0..1); hues are drawn +-HUE_SPREAD around it.
HUE_CENTRE = {DISC: 0.0, BOX: 0.2, TRIANGLE: 0.4, WIRE: 0.6, DOT: 0.8}
HUE_SPREAD = 0.12
BAND_PROB = 0.5
NOISE_STD = (3.0, 10.0)


class SyntheticSegmentation:
    """Procedural segmentation scenes: background + 5 object classes (see module docstring).

    Args:
        root: accepted for the common dataset signature and ignored.
        split: ``"train"`` or ``"val"``.
        transform: called as ``transform(image, label)``; without it ``__getitem__``
            returns the raw ``(uint8 HxWx3 RGB image, uint8 HxW label)`` pair.
        num_samples: the split's size: an int, or a mapping ``{split: size}``
            (missing splits keep their default, 2000 train / 100 val).
        image_size: ``(height, width)`` of every image.
        seed: the dataset seed; together with split and index it fixes a sample.
    """

    num_classes = 6
    class_names = ("background", "disc", "box", "triangle", "wire", "dot")
    palette = ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128))
    ignore_index = 255

    def __init__(self, root=None, split="train", transform=None, num_samples=None,
                 image_size=(160, 160), seed=0):
        if split not in SPLIT_IDS:
            raise ValueError(
                f"synthetic dataset: unknown split {split!r}; valid: {sorted(SPLIT_IDS)}")
        if isinstance(num_samples, Mapping):
            sizes = {**DEFAULT_NUM_SAMPLES, **num_samples}
            num_samples = sizes[split]
        elif num_samples is None:
            num_samples = DEFAULT_NUM_SAMPLES[split]
        if int(num_samples) < 1:
            raise ValueError(f"synthetic dataset: num_samples must be >= 1, got {num_samples}")
        height, width = (int(v) for v in image_size)
        if min(height, width) < 32:
            raise ValueError(
                f"synthetic dataset: image_size must be at least 32x32, got {image_size}")
        self.root = root
        self.split = split
        self.transform = transform
        self.num_samples = int(num_samples)
        self.image_size = (height, width)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"synthetic dataset: index {index} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])
        image, label = draw_scene(rng, *self.image_size)
        if self.transform is None:
            return image, label
        return self.transform(image, label)


def draw_scene(rng: np.random.Generator, height: int, width: int):
    """One scene: ``(uint8 HxWx3 RGB image, uint8 HxW label)``."""
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _background(rng, height, width, grid_y, grid_x)
    label = np.zeros((height, width), np.uint8)
    size = min(height, width)
    classes = (rng.choice(LARGE_CLASSES, rng.integers(2, 6)).tolist()
               + [WIRE] * int(rng.integers(0, 4)) + [DOT] * int(rng.integers(0, 9)))
    for cls in rng.permutation(classes).tolist():
        mask = _shape_mask(rng, cls, height, width, size)
        if not mask.any():
            continue
        colour = _class_colour(rng, cls)
        texture = rng.choice(TEXTURES, p=TEXTURE_PROBS[cls])
        pixels = mask.astype(bool)
        image[pixels] = _texture(rng, texture, colour, grid_y, grid_x)[pixels]
        label[pixels] = cls
        if cls in LARGE_CLASSES and rng.random() < BAND_PROB:
            label[_border_band(rng, mask)] = SyntheticSegmentation.ignore_index
    image = cv2.GaussianBlur(image, (3, 3), float(rng.uniform(0.3, 0.8)))
    image += rng.normal(0.0, rng.uniform(*NOISE_STD), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _background(rng, height, width, grid_y, grid_x):
    """A smooth, weakly coloured random field plus a linear gradient; sometimes faint stripes."""
    coarse = rng.uniform(50, 200, (4, 4, 1)) + rng.uniform(-30, 30, (4, 4, 3))
    coarse = coarse.astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * grid_x + np.sin(angle) * grid_y) / max(height, width)
    image += (rng.uniform(-40, 40) * ramp)[..., None]
    if rng.random() < 0.3:
        image += (rng.uniform(8, 20) * _stripes(rng, grid_y, grid_x))[..., None]
    return image


def _class_colour(rng, cls):
    """An RGB colour (float, 0..255) from the class's hue range; ranges overlap between classes."""
    hue = (HUE_CENTRE[cls] + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    return 255.0 * np.array(rgb, np.float32)


def _stripes(rng, grid_y, grid_x):
    """A +-1 square wave of random orientation and period 6-16 px."""
    angle = rng.uniform(0, np.pi)
    phase = np.cos(angle) * grid_x + np.sin(angle) * grid_y
    return np.sign(np.sin(2 * np.pi * phase / rng.uniform(6, 16)))


def _texture(rng, kind, colour, grid_y, grid_x):
    """A full-frame HxWx3 float texture around ``colour`` (flat, gradient, stripes or checker)."""
    height, width = grid_y.shape
    if kind == "flat":
        return np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * (grid_x - width / 2) + np.sin(angle) * (grid_y - height / 2))
        weight = 1.0 + 1.2 * ramp / max(height, width)
    elif kind == "stripes":
        weight = 1.0 + 0.3 * _stripes(rng, grid_y, grid_x)
    else:
        cell = rng.uniform(5, 12)
        checker = (np.floor(grid_x / cell) + np.floor(grid_y / cell)) % 2
        weight = 0.7 + 0.6 * checker
    return weight[..., None] * colour


def _shape_mask(rng, cls, height, width, size):
    """A uint8 HxW mask (1 inside) of one object of class ``cls``."""
    mask = np.zeros((height, width), np.uint8)
    centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    if cls == DISC:
        axes = (int(rng.uniform(0.06, 0.22) * size), int(rng.uniform(0.06, 0.22) * size))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif cls == BOX:
        box = (centre, (rng.uniform(0.12, 0.45) * size, rng.uniform(0.12, 0.45) * size),
               float(rng.uniform(0, 90)))
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    elif cls == TRIANGLE:
        radius = rng.uniform(0.1, 0.28) * size
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        angles += rng.uniform(-0.5, 0.5, 3)
        points = np.stack([centre[0] + radius * np.cos(angles),
                           centre[1] + radius * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    elif cls == WIRE:
        num_points = int(rng.integers(2, 4))
        points = [rng.uniform(-0.2, 1.2, 2) * (width, height) for _ in range(num_points)]
        cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, int(rng.integers(1, 4)))
    else:
        radius = int(rng.integers(2, 6))
        cv2.circle(mask, centre, radius, 1, -1)
    return mask


def _border_band(rng, mask):
    """A boolean band on the border of ``mask``: 1 px outside and 1-2 px inside (2-3 px wide)."""
    inner = int(rng.integers(1, 3))
    outside = cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)
    inside = cv2.erode(mask, np.ones((2 * inner + 1, 2 * inner + 1), np.uint8)).astype(bool)
    return outside & ~inside
