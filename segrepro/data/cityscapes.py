"""Cityscapes fine annotations (19 train classes, 255 = ignore).

Layout under ``root`` (the two official zips unpacked; ``scripts/prepare_cityscapes.py``
does that and writes the ``*_labelTrainIds.png`` files the dataset reads)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       official label ids 0..33
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  train ids 0..18, 255
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import INVALID, DatasetError, LabelledImages, label_lookup, map_label, require

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# The official mapping (cityscapesScripts, helpers/labels.py): label id -> train id. The other
# ids 0..33 (unlabeled, ego vehicle, ..., parking, rail track, guard rail, bridge, tunnel,
# polegroup, caravan, trailer) are ignored (255).
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
PREPARE = "prepare it with `python scripts/prepare_cityscapes.py --root {root}`"


def label_ids_to_train_ids(label_ids: np.ndarray, path) -> np.ndarray:
    """Map an official ``*_labelIds`` array to train ids (uint8, 255 = ignore); an id above 33
    is an error naming ``path``."""
    table = np.full(256, INVALID, np.int16)
    table[:NUM_LABEL_IDS] = 255
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return map_label(label_ids, table, path)


class CityscapesSegmentation(LabelledImages):
    """Cityscapes ``leftImg8bit`` images with ``gtFine`` train-id labels; ``split`` in
    {train, val, test}. ``scale``: see :class:`LabelledImages`."""

    num_classes = 19
    class_names = CLASS_NAMES
    palette = PALETTE
    label_table = label_lookup(19)

    def __init__(self, root, split: str = "train", transform=None, scale: float = 1.0):
        if root is None:
            raise DatasetError("Cityscapes: data.root is not set; point it at the folder holding "
                               "leftImg8bit/ and gtFine/ (e.g. data.root=data/cityscapes)")
        root = Path(root)
        fix = PREPARE.format(root=root)
        require(root, "Cityscapes root", fix)
        image_dir = require(root / "leftImg8bit" / split, "Cityscapes image folder", fix)
        label_dir = require(root / "gtFine" / split, "Cityscapes label folder", fix)
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        pairs = [(image, label_dir / image.parent.name / image.name.replace(IMAGE_SUFFIX, TRAIN_IDS_SUFFIX))
                 for image in images]
        super().__init__(pairs, transform, scale, fix)
