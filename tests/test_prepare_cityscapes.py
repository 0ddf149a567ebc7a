"""scripts/prepare_cityscapes.py on miniature Cityscapes trees (and zips of them)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from segrepro.data.cityscapes import CityscapesSegmentation
from segrepro.data.io import read_label
from tests.test_data_cityscapes import SIZE, make_cityscapes_tree, prepare_cityscapes, prepared_cityscapes

# A few entries of the official table (cityscapesScripts helpers/labels.py), written out
# independently of the code under test: label id -> train id.
OFFICIAL = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 14: 255, 17: 5, 18: 255,
            23: 10, 24: 11, 26: 13, 29: 255, 30: 255, 31: 16, 33: 18}


def zip_folder(root: Path, folder: str, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((root / folder).rglob("*")):
            zipped.write(path, path.relative_to(root).as_posix())
        zipped.writestr("license.txt", "miniature")


def test_label_ids_map_to_official_train_ids(tmp_path):
    root = prepared_cityscapes(tmp_path / "cityscapes")
    source = next((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    ids = read_label(source)
    train_ids = read_label(Path(str(source).replace("_labelIds", "_labelTrainIds")))
    for label_id, train_id in OFFICIAL.items():
        assert np.all(train_ids[ids == label_id] == train_id), label_id
    assert sorted(np.unique(train_ids).tolist()) == list(range(19)) + [255]


def test_unknown_label_id_is_an_error_naming_the_file(tmp_path, capsys):
    root = make_cityscapes_tree(tmp_path / "cityscapes")
    bad = next((root / "gtFine" / "val").glob("*/*_labelIds.png"))
    Image.fromarray(np.full(SIZE, 40, np.uint8)).save(bad)
    assert prepare_cityscapes.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "[40]" in err


def test_prepare_unpacks_the_official_zips_once(tmp_path, capsys):
    tree = make_cityscapes_tree(tmp_path / "staging")
    root = tmp_path / "cityscapes"
    root.mkdir()
    zip_folder(tree, "leftImg8bit", root / "leftImg8bit_trainvaltest.zip")
    zip_folder(tree, "gtFine", root / "gtFine_trainvaltest.zip")
    assert prepare_cityscapes.main(["--root", str(root)]) == 0
    assert "gtFine/train: 2 labels (the full dataset has 2975), 2 converted now" in capsys.readouterr().out
    assert len(CityscapesSegmentation(root, "train")) == 2
    assert prepare_cityscapes.main(["--root", str(root)]) == 0
    assert "2 labels (the full dataset has 2975), 0 converted now" in capsys.readouterr().out


def test_prepare_without_data_explains_the_login_download(tmp_path, capsys):
    assert prepare_cityscapes.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cityscapes-dataset.com" in err
    assert "leftImg8bit_trainvaltest.zip" in err and "gtFine_trainvaltest.zip" in err
