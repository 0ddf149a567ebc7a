"""VOC dataset on miniature VOC 2012 + SBD trees built in the real formats.

The builders here (``make_voc_tree``, ``make_sbd_tree``, ``prepared_voc``) are also
used by test_prepare_voc.py and test_experiments.py.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from segrepro.data.io import DatasetError, read_label
from segrepro.data.voc import VOCSegmentation, colour_map

REPO = Path(__file__).resolve().parents[1]
SIZE = (20, 28)  # height, width of every miniature image

# Miniature splits: VOC train/val, SBD train/val, with the overlaps of the real data
# (an SBD image in VOC train, SBD images in VOC val that trainaug must drop).
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2008_000008", "2007_000042", "2008_000015", "2008_000019"]
SBD_VAL = ["2008_000023", "2007_000039"]
TRAINAUG = sorted((set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN)) - set(VOC_VAL))


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def voc_label(name: str, offset: int = 0) -> np.ndarray:
    """A label map that differs per image (and per ``offset``): class blocks, a 255 band."""
    rng = np.random.default_rng([int(name.replace("_", "")), offset])
    label = np.zeros(SIZE, np.uint8)
    label[:, SIZE[1] // 2:] = rng.integers(1, 21)
    label[SIZE[0] // 2:, :] = rng.integers(1, 21)
    label[SIZE[0] // 2 - 1, :] = 255
    return label


def sbd_label(name: str) -> np.ndarray:
    """SBD's label of ``name``: different from VOC's, no ignore band (as in SBD)."""
    return np.where(voc_label(name, offset=1) == 255, 0, voc_label(name, offset=1)).astype(np.uint8)


def make_voc_tree(root: Path) -> Path:
    """``VOCdevkit/VOC2012`` in miniature: JPEGs of every image, palette PNG labels and split
    lists for VOC train and val."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in sorted(set(VOC_TRAIN) | set(VOC_VAL) | set(SBD_TRAIN) | set(SBD_VAL)):
        pixels = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
    for name in VOC_TRAIN + VOC_VAL:
        label = Image.fromarray(voc_label(name), mode="L").convert("P")
        label.putpalette([c for colour in colour_map(256) for c in colour])
        label.save(root / "SegmentationClass" / f"{name}.png")
    lists = {"train": VOC_TRAIN, "val": VOC_VAL, "trainval": sorted(VOC_TRAIN + VOC_VAL)}
    for split, names in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def save_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """An SBD ``cls/*.mat`` file with the real layout: struct ``GTcls`` with ``Boundaries``
    (a cell of sparse maps), ``Segmentation`` and ``CategoriesPresent``."""
    boundaries = np.empty((20, 1), dtype=object)
    for index in range(20):
        boundaries[index, 0] = scipy.sparse.csc_matrix(segmentation == index + 1, dtype=np.float64)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": segmentation,
                                      "CategoriesPresent": present}})


def make_sbd_tree(root: Path) -> Path:
    """``benchmark_RELEASE/dataset`` in miniature: ``cls/*.mat`` and the train/val lists."""
    (root / "cls").mkdir(parents=True)
    for name in SBD_TRAIN + SBD_VAL:
        save_sbd_mat(root / "cls" / f"{name}.mat", sbd_label(name))
    (root / "train.txt").write_text("".join(f"{n}\n" for n in SBD_TRAIN))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in SBD_VAL))
    return root


def prepared_voc(tmp_path: Path) -> Path:
    """Miniature VOC + SBD trees run through ``scripts/prepare_voc.py``; returns its ``--out``."""
    voc = make_voc_tree(tmp_path / "VOCdevkit" / "VOC2012")
    sbd = make_sbd_tree(tmp_path / "benchmark_RELEASE" / "dataset")
    out = tmp_path / "voc"
    assert load_script("prepare_voc").main(["--voc-root", str(voc), "--sbd-root", str(sbd), "--out", str(out)]) == 0
    return out


def test_palette_png_is_read_as_index_not_colour(tmp_path):
    label = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    image = Image.fromarray(label, mode="L").convert("P")
    image.putpalette([c for colour in colour_map(256) for c in colour])
    image.save(tmp_path / "label.png")
    assert Image.open(tmp_path / "label.png").convert("RGB").getpixel((1, 0)) == (128, 0, 0)
    np.testing.assert_array_equal(read_label(tmp_path / "label.png"), label)


def test_voc_splits_load_with_the_right_labels(tmp_path):
    root = prepared_voc(tmp_path)
    train = VOCSegmentation(root, "train")
    assert len(train) == len(VOC_TRAIN)
    image, label = train[0]
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, voc_label(VOC_TRAIN[0]))
    assert len(VOCSegmentation(root, "val")) == len(VOC_VAL)

    trainaug = VOCSegmentation(root, "trainaug")
    assert len(trainaug) == len(TRAINAUG)
    for index, name in enumerate(TRAINAUG):
        expected = voc_label(name) if name in VOC_TRAIN else sbd_label(name)
        np.testing.assert_array_equal(trainaug[index][1], expected, err_msg=name)


def test_voc_dataset_class_attributes():
    assert VOCSegmentation.num_classes == len(VOCSegmentation.class_names) == len(VOCSegmentation.palette) == 21
    assert VOCSegmentation.palette[15] == (192, 128, 128)  # person, as in the VOC devkit


@pytest.mark.parametrize("missing, named", [
    ("JPEGImages", "VOC image folder"),
    ("SegmentationClassAug", "VOC label folder"),
    ("ImageSets/Segmentation/trainaug.txt", "split list"),
])
def test_voc_missing_piece_names_it_and_the_prepare_command(tmp_path, missing, named):
    root = prepared_voc(tmp_path)
    target = root / missing
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(DatasetError, match=named) as error:
        VOCSegmentation(root, "trainaug")
    assert str(target) in str(error.value) and "prepare_voc.py" in str(error.value)


def test_voc_missing_image_is_named(tmp_path):
    root = prepared_voc(tmp_path)
    (root / "JPEGImages" / f"{VOC_TRAIN[1]}.jpg").unlink()
    with pytest.raises(DatasetError, match=f"{VOC_TRAIN[1]}.jpg"):
        VOCSegmentation(root, "train")


def test_trainaug_at_the_raw_voc_folder_says_to_prepare_it_elsewhere(tmp_path):
    raw = make_voc_tree(tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(DatasetError) as error:
        VOCSegmentation(raw, "trainaug")
    message = str(error.value)
    assert "looks like the raw VOC 2012 folder" in message
    assert f"--voc-root {raw}" in message and "--out data/voc`, then data.root=data/voc" in message
    assert f"--out {raw}" not in message  # never suggests writing into the raw folder
