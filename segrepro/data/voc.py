"""Pascal VOC 2012 segmentation (21 classes, 255 = ignore), with the SBD-augmented ``trainaug`` split.

Layout under ``root`` (the VOC folder ``VOCdevkit/VOC2012``, or the ``--out``
folder of ``scripts/prepare_voc.py``, which also holds ``trainaug``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png         palette PNGs: the palette index is the class
    SegmentationClassAug/<id>.png      trainaug labels written by scripts/prepare_voc.py
    ImageSets/Segmentation/<split>.txt one id per line (train, val, trainval, trainaug)
"""
from __future__ import annotations

from pathlib import Path

from .io import DatasetError, LabelledImages, label_lookup, read_list, require

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
PREPARE = ("prepare it with `python scripts/prepare_voc.py --voc-root VOCdevkit/VOC2012 "
           "--sbd-root benchmark_RELEASE/dataset --out {root}` (or `--download --out {root}`)")
# data.root at the raw VOC folder, which has no trainaug labels: prepare_voc.py reads it, writes another
PREPARE_FROM_RAW = ("{root} looks like the raw VOC 2012 folder; trainaug needs the folder scripts/prepare_voc.py "
                    "writes: `python scripts/prepare_voc.py --voc-root {root} --sbd-root benchmark_RELEASE/dataset "
                    "--out data/voc`, then data.root=data/voc")


def colour_map(size: int = 256) -> tuple:
    """The VOC label colours: entry ``i`` is the RGB of index ``i`` (255, the ignore band, is cream)."""
    colours = []
    for index in range(size):
        red = green = blue = 0
        for bit in range(8):
            red |= ((index >> (3 * bit)) & 1) << (7 - bit)
            green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        colours.append((red, green, blue))
    return tuple(colours)


class VOCSegmentation(LabelledImages):
    """Pascal VOC 2012 segmentation; ``split`` names a list in ``ImageSets/Segmentation/``.

    The ``trainaug`` split reads its labels from ``SegmentationClassAug/``, every
    other split from ``SegmentationClass/``. ``scale``: see :class:`LabelledImages`.
    """

    num_classes = 21
    class_names = CLASS_NAMES
    palette = colour_map(21)
    label_table = label_lookup(21)

    def __init__(self, root, split: str = "train", transform=None, scale: float = 1.0):
        if root is None:
            raise DatasetError("VOC: data.root is not set; point it at the folder written by "
                               "scripts/prepare_voc.py (e.g. data.root=data/voc)")
        root = Path(root)
        label_dir = "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
        raw = (root / "SegmentationClass").is_dir() and not (root / "SegmentationClassAug").is_dir()
        fix = (PREPARE_FROM_RAW if raw and split == "trainaug" else PREPARE).format(root=root)
        require(root, "VOC root", fix)
        require(root / "JPEGImages", "VOC image folder", fix)
        require(root / label_dir, "VOC label folder", fix)
        ids = read_list(root / "ImageSets" / "Segmentation" / f"{split}.txt", fix)
        pairs = [(root / "JPEGImages" / f"{name}.jpg", root / label_dir / f"{name}.png") for name in ids]
        super().__init__(pairs, transform, scale, fix)
