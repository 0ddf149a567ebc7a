"""Pascal VOC 2012 segmentation (21 classes, 255 = ignore), with the SBD-augmented ``trainaug`` split.

Layout under ``root`` (the VOC folder ``VOCdevkit/VOC2012``, or the ``--out``
folder of ``scripts/prepare_voc.py``, which also holds ``trainaug``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png         palette PNGs: the palette index is the class
    SegmentationClassAug/<id>.png      trainaug labels written by scripts/prepare_voc.py
    ImageSets/Segmentation/<split>.txt one id per line (train, val, trainval, trainaug)

:class:`VOCTestImages` reads the test images (no labels) of the VOC 2012 test tar for
``segrepro predict``, which writes them in the evaluation server's layout (see the class).
"""
from __future__ import annotations

import logging
from pathlib import Path

from .io import DatasetError, LabelledImages, UnlabelledImages, label_lookup, read_list, require

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
GET_TEST = ("download VOC2012test.tar from the evaluation server (http://host.robots.ox.ac.uk:8080/, an account "
            "is needed) and unpack it there: `tar xf VOC2012test.tar -C {root}`")
TEST_SIZE = 1456  # images in the VOC 2012 segmentation test list
# The evaluation server's segmentation competitions (devkit: comp5 trains on VOC 2012 trainval only,
# comp6 on any data but the test set) and the folder of each in the uploaded archive
# (VOCinit.m: VOCopts.seg.clsresdir = results/VOC2012/Segmentation/<competition>_<test set>_cls)
COMPETITIONS = ("comp5", "comp6")

log = logging.getLogger(__name__)


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


class VOCTestImages(UnlabelledImages):
    """The VOC 2012 segmentation test images (no labels: the evaluation server scores them).

    ``root`` is the folder ``VOC2012test.tar`` was unpacked into (it holds ``VOCdevkit/VOC2012``)
    or that ``VOC2012`` folder itself; the tar holds ``JPEGImages/`` and
    ``ImageSets/Segmentation/test.txt`` (1,456 ids) there, as the trainval tar does.

    ``competition`` names the server's competition, which fixes the folder of the archive
    (:attr:`submission_folder`): ``comp6`` for systems trained on any data but the test set (the
    papers' models: SBD's trainaug labels and ImageNet weights are outside VOC 2012), ``comp5``
    for those trained on VOC 2012 trainval alone.
    """

    num_classes = 21
    class_names = CLASS_NAMES
    palette = colour_map(21)

    def __init__(self, root, split: str = "test", transform=None, scale: float = 1.0, competition: str = "comp6"):
        if root is None:
            raise DatasetError("VOC test: data.root is not set; point it at the folder VOC2012test.tar was "
                               "unpacked into (e.g. data.root=data/voc_test)")
        if competition not in COMPETITIONS:
            raise DatasetError(f"VOC test: data.dataset.competition={competition!r}; valid: {', '.join(COMPETITIONS)} "
                               "(comp5: trained on VOC 2012 trainval only; comp6: any other data too)")
        root = Path(root)
        base = root / "VOCdevkit" / "VOC2012" if (root / "VOCdevkit" / "VOC2012").is_dir() else root
        fix = GET_TEST.format(root=root)
        require(root, "VOC test root", fix)
        require(base / "JPEGImages", "VOC image folder", fix)
        ids = read_list(base / "ImageSets" / "Segmentation" / f"{split}.txt", fix)
        if split == "test" and len(ids) != TEST_SIZE:
            log.warning("%s lists %d images; the VOC 2012 test list has %d (the server wants a prediction for "
                        "each)", base / "ImageSets" / "Segmentation" / "test.txt", len(ids), TEST_SIZE)
        super().__init__([base / "JPEGImages" / f"{name}.jpg" for name in ids], transform, scale, fix)
        self.submission_folder = f"results/VOC2012/Segmentation/{competition}_{split}_cls"
