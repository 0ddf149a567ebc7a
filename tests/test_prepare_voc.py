"""scripts/prepare_voc.py on miniature VOC 2012 + SBD trees (and archives of them, for --download)."""
from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest
import scipy.io

from segrepro.data.io import read_label
from tests.test_data_voc import (SBD_TRAIN, SBD_VAL, TRAINAUG, VOC_TRAIN, VOC_VAL, load_script, make_sbd_tree,
                           make_voc_tree, save_sbd_mat, sbd_label, voc_label)

prepare_voc = load_script("prepare_voc")


@pytest.fixture
def trees(tmp_path):
    return make_voc_tree(tmp_path / "VOC2012"), make_sbd_tree(tmp_path / "sbd")


def run(voc, sbd, out):
    return prepare_voc.main(["--voc-root", str(voc), "--sbd-root", str(sbd), "--out", str(out)])


def test_trainaug_is_sbd_train_val_plus_voc_train_minus_voc_val(trees, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(*trees, out) == 0
    listed = (out / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()
    assert listed == TRAINAUG
    assert set(listed) == {"2007_000032", "2007_000039", "2008_000008", "2008_000015", "2008_000019",
                           "2008_000023"}
    assert not set(listed) & set(VOC_VAL) and set(VOC_TRAIN) <= set(listed)
    printed = capsys.readouterr().out
    assert f"trainaug: {len(TRAINAUG)} images" in printed
    assert "10582" in printed and "NOTE" in printed  # the miniature differs from the real count
    for split, names in {"train": VOC_TRAIN, "val": VOC_VAL}.items():
        assert (out / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split() == names
    assert (out / "JPEGImages" / f"{SBD_VAL[0]}.jpg").exists()


def test_sbd_labels_are_converted_and_voc_annotations_win(trees, tmp_path):
    out = tmp_path / "out"
    assert run(*trees, out) == 0
    labels = out / "SegmentationClassAug"
    assert sorted(p.stem for p in labels.glob("*.png")) == TRAINAUG
    sbd_only = sorted(set(TRAINAUG) - set(VOC_TRAIN))
    for name in sbd_only:
        np.testing.assert_array_equal(read_label(labels / f"{name}.png"), sbd_label(name))
    for name in VOC_TRAIN:  # in SBD too for two of them: VOC's annotation (with its 255 band) is kept
        np.testing.assert_array_equal(read_label(labels / f"{name}.png"), voc_label(name))
    assert set(VOC_TRAIN) & (set(SBD_TRAIN) | set(SBD_VAL))


def test_second_run_finds_the_work_done(trees, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(*trees, out) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.is_symlink()}
    capsys.readouterr()
    assert run(*trees, out) == 0
    assert "already there" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_interrupted_run_is_completed(trees, tmp_path):
    out = tmp_path / "out"
    assert run(*trees, out) == 0
    (out / "SegmentationClassAug" / f"{TRAINAUG[-1]}.png").unlink()
    (out / "ImageSets" / "Segmentation" / "trainaug.txt").unlink()
    assert run(*trees, out) == 0
    assert (out / "SegmentationClassAug" / f"{TRAINAUG[-1]}.png").exists()
    assert (out / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split() == TRAINAUG


def test_sbd_mat_without_gtcls_is_named(trees, tmp_path, capsys):
    voc, sbd = trees
    scipy.io.savemat(sbd / "cls" / f"{SBD_TRAIN[2]}.mat", {"Segmentation": np.zeros((4, 4), np.uint8)})
    assert run(voc, sbd, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{SBD_TRAIN[2]}.mat" in err and "GTcls.Segmentation" in err


def test_sbd_label_out_of_range_is_named(trees, tmp_path, capsys):
    voc, sbd = trees
    save_sbd_mat(sbd / "cls" / f"{SBD_TRAIN[2]}.mat", np.full((20, 28), 42, np.uint8))
    assert run(voc, sbd, tmp_path / "out") == 1
    assert f"{SBD_TRAIN[2]}.mat" in capsys.readouterr().err


def test_missing_voc_folder_is_named(trees, tmp_path, capsys):
    voc, sbd = trees
    assert run(voc.parent / "nowhere", sbd, tmp_path / "out") == 1
    assert "nowhere/JPEGImages" in capsys.readouterr().err


def tar_of(folder, arcname, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path


def archives(tmp_path, trees, monkeypatch, voc_md5=None):
    """Point the script's archive table at file:// archives of the miniature trees."""
    voc, sbd = trees
    voc_tar = tar_of(voc, "VOCdevkit/VOC2012", tmp_path / "VOCtrainval_11-May-2012.tar")
    sbd_tgz = tar_of(sbd, "benchmark_RELEASE/dataset", tmp_path / "benchmark.tgz")
    md5 = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (voc_tar, sbd_tgz)}
    monkeypatch.setitem(prepare_voc.ARCHIVES, "voc", prepare_voc.Archive(
        voc_tar.as_uri(), voc_md5 or md5[voc_tar], "VOCdevkit/VOC2012"))
    monkeypatch.setitem(prepare_voc.ARCHIVES, "sbd", prepare_voc.Archive(
        sbd_tgz.as_uri(), md5[sbd_tgz], "benchmark_RELEASE/dataset"))


def test_download_verifies_unpacks_and_prepares(trees, tmp_path, monkeypatch, capsys):
    archives(tmp_path, trees, monkeypatch)
    out = tmp_path / "out"
    assert prepare_voc.main(["--download", "--out", str(out)]) == 0
    assert (out / "downloads" / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir()
    assert (out / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split() == TRAINAUG
    capsys.readouterr()
    assert prepare_voc.main(["--download", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already unpacked") == 2


def test_download_with_wrong_checksum_fails_before_unpacking(trees, tmp_path, monkeypatch, capsys):
    archives(tmp_path, trees, monkeypatch, voc_md5="0" * 32)
    out = tmp_path / "out"
    assert prepare_voc.main(["--download", "--out", str(out)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (out / "downloads" / "VOCdevkit").exists()
    assert not list((out / "downloads").glob("*.tar*"))


def test_download_without_network_says_what_to_do(tmp_path, monkeypatch, capsys):
    unreachable = (tmp_path / "no-such-server" / "VOCtrainval_11-May-2012.tar").as_uri()
    monkeypatch.setitem(prepare_voc.ARCHIVES, "voc", prepare_voc.Archive(unreachable, "0" * 32, "VOCdevkit/VOC2012"))
    assert prepare_voc.main(["--download", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "cannot download" in err and "--voc-root" in err


def test_roots_or_download_are_required(tmp_path):
    with pytest.raises(SystemExit):
        prepare_voc.main(["--out", str(tmp_path)])
