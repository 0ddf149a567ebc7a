"""Reading and writing images and label maps, with errors that name the file.

:class:`LabelledImages` is the common base of the file-backed datasets (VOC,
Cityscapes, CamVid): it holds the ``(image, label)`` file pairs, checks them on
start, decodes them with Pillow (in the DataLoader workers), maps the raw label
values to class ids through a lookup table, optionally rescales the pair, and
applies the transform. :class:`UnlabelledImages` is the same for a split without
labels (a benchmark's test set, scored by its server): ``segrepro predict`` only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ..files import atomic_write

INVALID = -1  # lookup-table entry of a raw label value that is neither a class nor ignored


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message names it and the fix."""


def require(path: Path, what: str, fix: str) -> Path:
    """``path`` if it exists, else a :class:`DatasetError` naming ``what`` is missing and ``fix``."""
    if not Path(path).exists():
        raise DatasetError(f"{what} not found: {path}\n  {fix}")
    return Path(path)


def read_list(path, fix: str = "") -> list:
    """The non-empty, stripped lines of a split list file."""
    lines = require(path, "split list", fix).read_text().splitlines()
    return [line.strip() for line in lines if line.strip()]


def read_image(path) -> np.ndarray:
    """An image file as uint8 ``HxWx3`` RGB."""
    return np.asarray(_open(path, "image").convert("RGB"))


def read_label(path) -> np.ndarray:
    """A label map as ``HxW`` integers: the palette index of a palette PNG, the value of a grayscale one."""
    label = _open(path, "label map")
    if label.mode not in ("P", "L", "I", "I;16"):
        raise DatasetError(
            f"label map {path} is a {label.mode} image; expected a palette (P) or grayscale (L) PNG "
            "of class indices (colour-coded RGB label maps are not read)"
        )
    return np.asarray(label)


def write_label(path, label: np.ndarray, palette: Optional[Sequence[Sequence[int]]] = None,
                fsync: bool = True) -> None:
    """Write a uint8 label map as PNG, atomically: a palette PNG with ``palette``, else grayscale;
    ``fsync=False`` for the thousands of maps a prepare script writes (see :func:`atomic_write`)."""
    image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="L")
    if palette is not None:
        image = image.convert("P")
        image.putpalette([channel for colour in palette for channel in colour])
    with atomic_write(path, fsync=fsync) as tmp:
        image.save(tmp, format="PNG")


def label_lookup(classes: int, ignore_index: int = 255, extra: Optional[dict] = None) -> np.ndarray:
    """A 256-entry table: values ``0..classes-1`` and ``ignore_index`` map to themselves, the
    ``extra`` ``{raw: mapped}`` entries as given, everything else to :data:`INVALID`."""
    table = np.full(256, INVALID, np.int16)
    table[:classes] = np.arange(classes)
    table[ignore_index] = ignore_index
    for raw, mapped in (extra or {}).items():
        table[raw] = mapped
    return table


def map_label(label: np.ndarray, table: np.ndarray, path) -> np.ndarray:
    """``table[label]`` as uint8; a raw value the table marks :data:`INVALID` is an error naming ``path``."""
    if label.size and (label.min() < 0 or label.max() >= len(table)):
        raise DatasetError(f"label map {path} holds values outside 0..{len(table) - 1} "
                           f"(min {label.min()}, max {label.max()})")
    mapped = table[label]
    invalid = mapped == INVALID
    if invalid.any():
        valid = np.flatnonzero(table != INVALID).tolist()
        raise DatasetError(f"label map {path} holds invalid values {np.unique(label[invalid]).tolist()}; "
                           f"valid raw values: {valid}")
    return mapped.astype(np.uint8)


def _open(path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read {what} {path} (corrupt or not an image?): {error}") from None
    return image


class LabelledImages:
    """Base of the file-backed datasets: ``(image, label)`` file pairs read on demand.

    Subclasses set ``num_classes``, ``class_names``, ``palette`` and ``label_table``
    (a :func:`label_lookup` table from raw label values to class ids or 255), find
    their pairs, and call ``super().__init__``.

    Args:
        pairs: ``(image path, label path)`` per sample.
        transform: called as ``transform(image, label)``; without it ``__getitem__``
            returns the raw ``(uint8 HxWx3 image, uint8 HxW label)``.
        scale: resize every pair by this factor before the transform (image bilinear,
            label nearest), e.g. 0.5 to train and evaluate at half resolution.
        fix: how to repair a missing file, appended to the error message.
    """

    num_classes: int
    class_names: tuple
    palette: tuple
    label_table: np.ndarray
    ignore_index = 255
    labelled = True  # False: the labels are placeholders (UnlabelledImages)

    def __init__(self, pairs, transform=None, scale: float = 1.0, fix: str = ""):
        if not pairs:
            raise DatasetError(f"{type(self).__name__}: the split lists no images.\n  {fix}")
        if not scale > 0:
            raise DatasetError(f"{type(self).__name__}: data.dataset.scale must be > 0, got {scale}")
        files = [path for pair in pairs for path in pair if path is not None]
        missing = [path for path in files if not os.path.exists(path)]
        if missing:
            what = "image and label files" if self.labelled else "images"
            raise DatasetError(f"{len(missing)} of the split's {len(files)} {what} "
                               f"are missing, the first: {missing[0]}\n  {fix}")
        self.pairs = [(str(image), None if label is None else str(label)) for image, label in pairs]
        self.transform = transform
        self.scale = float(scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        if label_path is None:  # UnlabelledImages: a placeholder, ignored everywhere
            label = np.full(image.shape[:2], self.ignore_index, np.uint8)
        else:
            label = map_label(read_label(label_path), self.label_table, label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                               f"map {label_path} is {label.shape[1]}x{label.shape[0]} (WxH)")
        if self.scale != 1.0:
            size = (max(1, round(image.shape[1] * self.scale)), max(1, round(image.shape[0] * self.scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)
        if self.transform is None:
            return image, label
        return self.transform(image, label)


class UnlabelledImages(LabelledImages):
    """Images without labels: a test split whose labels only the benchmark's server has.

    Each sample's label is a placeholder, ``ignore_index`` at every pixel, so the validation
    pipeline, the loader and the evaluator's inference run on it unchanged; ``labelled = False``
    makes :func:`segrepro.data.build_dataset` refuse it for training and evaluation (only
    ``segrepro predict`` reads it). Subclasses set ``num_classes``, ``class_names`` and ``palette``
    (the classes the predictions are written in), find their image files, and call
    ``super().__init__``; ``scale`` as in :class:`LabelledImages`.
    """

    labelled = False

    def __init__(self, images, transform=None, scale: float = 1.0, fix: str = ""):
        super().__init__([(image, None) for image in images], transform, scale, fix)
