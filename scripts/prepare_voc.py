"""Prepare Pascal VOC 2012 + SBD for segrepro: SBD labels as PNGs and the ``trainaug`` split.

    python scripts/prepare_voc.py --voc-root VOCdevkit/VOC2012 --sbd-root benchmark_RELEASE/dataset --out data/voc
    python scripts/prepare_voc.py --download --out data/voc

``--out`` becomes the dataset root (``data.root``) of ``data=voc_train`` and
``data=voc_trainaug``: it links VOC's ``JPEGImages/`` and ``SegmentationClass/``,
copies its split lists, and writes

* ``SegmentationClassAug/<id>.png``: a label for every trainaug image, VOC's own
  annotation where it has one, else SBD's ``cls/<id>.mat`` (``GTcls.Segmentation``);
* ``ImageSets/Segmentation/trainaug.txt``: SBD train + SBD val + VOC train, minus
  VOC val (10,582 images on the real data).

``--download`` fetches the official archives into ``<out>/downloads/``, checks
their MD5 sums and unpacks them. Every step skips work already done, so a
second run (or a run after an interruption) only finishes what is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from segrepro.data.io import DatasetError, read_list, require, write_label
from segrepro.files import atomic_write
from segrepro.data.voc import colour_map

TRAINAUG_SIZE = 10582
VOC_SPLITS = ("train", "val", "trainval")


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    folder: str  # the dataset folder inside the unpacked archive


ARCHIVES = {
    "voc": Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                   "6cd6e144f989b92b3379bac3b3de84fd", "VOCdevkit/VOC2012"),
    "sbd": Archive("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                   "benchmark.tgz", "82b4d87ceb2ed10f6038a1cba92111cb", "benchmark_RELEASE/dataset"),
}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        voc_root, sbd_root = args.voc_root, args.sbd_root
        if args.download:
            voc_root = voc_root or fetch(ARCHIVES["voc"], out / "downloads")
            sbd_root = sbd_root or fetch(ARCHIVES["sbd"], out / "downloads")
        prepare(Path(voc_root), Path(sbd_root), out)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voc-root", help="the VOC 2012 folder (VOCdevkit/VOC2012)")
    parser.add_argument("--sbd-root", help="the SBD folder holding cls/, train.txt, val.txt "
                                           "(benchmark_RELEASE/dataset)")
    parser.add_argument("--out", required=True, help="the dataset root to write (data.root)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the VOC and SBD archives (about 2 GB + 1.4 GB) into <out>/downloads/")
    args = parser.parse_args(argv)
    if not args.download and not (args.voc_root and args.sbd_root):
        parser.error("give --voc-root and --sbd-root, or --download")
    return args


def prepare(voc_root: Path, sbd_root: Path, out: Path) -> None:
    fix = "download VOC 2012 trainval and SBD (or pass --download)"
    require(voc_root / "JPEGImages", "VOC image folder", fix)
    require(voc_root / "SegmentationClass", "VOC label folder", fix)
    require(sbd_root / "cls", "SBD label folder", fix)
    voc = {split: read_list(voc_root / "ImageSets" / "Segmentation" / f"{split}.txt", fix) for split in VOC_SPLITS}
    sbd = {split: read_list(sbd_root / f"{split}.txt", fix) for split in ("train", "val")}

    val = set(voc["val"])
    trainaug = sorted((set(sbd["train"]) | set(sbd["val"]) | set(voc["train"])) - val)
    missing = [name for name in trainaug if not (voc_root / "JPEGImages" / f"{name}.jpg").exists()]
    if missing:
        raise DatasetError(f"{len(missing)} trainaug images are not in {voc_root / 'JPEGImages'}, "
                           f"the first: {missing[0]}.jpg")

    out.mkdir(parents=True, exist_ok=True)
    for folder in ("JPEGImages", "SegmentationClass"):
        link(voc_root / folder, out / folder)
    for split in VOC_SPLITS:
        write_list(out / "ImageSets" / "Segmentation" / f"{split}.txt", voc[split])
    write_labels(trainaug, set(voc["trainval"]), voc_root, sbd_root, out / "SegmentationClassAug")
    write_list(out / "ImageSets" / "Segmentation" / "trainaug.txt", trainaug)

    print(f"trainaug: {len(trainaug)} images (SBD train {len(sbd['train'])} + SBD val {len(sbd['val'])} "
          f"+ VOC train {len(voc['train'])}, without duplicates, minus VOC val {len(val)})")
    if len(trainaug) != TRAINAUG_SIZE:
        print(f"NOTE: the real VOC 2012 + SBD give {TRAINAUG_SIZE} trainaug images, these roots give "
              f"{len(trainaug)}: check that they are complete, unmodified copies.")
    print(f"done: train with data=voc_trainaug data.root={out}")


def write_labels(names, voc_labelled, voc_root: Path, sbd_root: Path, label_dir: Path) -> None:
    """One PNG per trainaug image: VOC's own annotation if it has one, else SBD's, converted."""
    label_dir.mkdir(parents=True, exist_ok=True)
    todo = [name for name in names if not (label_dir / f"{name}.png").exists()]
    if not todo:
        print(f"{label_dir}: all {len(names)} labels already there")
        return
    palette = colour_map(256)
    for name in tqdm(todo, desc="trainaug labels", unit="label"):
        target = label_dir / f"{name}.png"
        if name in voc_labelled:
            copy_atomic(voc_root / "SegmentationClass" / f"{name}.png", target)
        else:
            write_label(target, read_sbd_label(sbd_root / "cls" / f"{name}.mat"), palette, fsync=False)


def read_sbd_label(path: Path) -> np.ndarray:
    """The class map of an SBD ``cls/*.mat`` file (``GTcls.Segmentation``, values 0..20)."""
    try:
        segmentation = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
    except FileNotFoundError:
        raise DatasetError(f"SBD label not found: {path}") from None
    except (KeyError, AttributeError):
        raise DatasetError(f"SBD label {path} has no GTcls.Segmentation field") from None
    except (OSError, ValueError, TypeError) as error:
        raise DatasetError(f"cannot read SBD label {path} (corrupt or not a MATLAB file?): {error}") from None
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2 or segmentation.size == 0 or segmentation.min() < 0 or segmentation.max() > 20:
        raise DatasetError(f"SBD label {path}: expected a 2-D map of classes 0..20, got shape "
                           f"{segmentation.shape} with values {np.unique(segmentation)[:10].tolist()}")
    return segmentation.astype(np.uint8)


def link(source: Path, target: Path) -> None:
    """``target`` as a symbolic link to ``source`` (nothing to do when it already is that folder)."""
    if target.exists() and target.resolve() == source.resolve():
        return
    if target.exists() or target.is_symlink():
        raise DatasetError(f"{target} exists and is not {source}; remove it or choose another --out")
    target.symlink_to(source.resolve(), target_is_directory=True)


def write_list(path: Path, names) -> None:
    text = "".join(f"{name}\n" for name in names)
    if path.exists() and path.read_text() == text:
        return
    with atomic_write(path, "w") as file:
        file.write(text)


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)


def fetch(archive: Archive, folder: Path) -> Path:
    """Download ``archive`` into ``folder`` (unless a verified copy is there), unpack it, and
    return its dataset folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive.url.rsplit("/", 1)[1]
    done = folder / f".{path.name}.unpacked"
    if done.exists():
        print(f"{path.name}: already unpacked")
        return folder / archive.folder
    if not (path.exists() and md5sum(path) == archive.md5):
        download(archive, path)
    with tarfile.open(path) as tar:
        for member in tqdm(tar.getmembers(), desc=f"unpack {path.name}", unit="file"):
            tar.extract(member, folder, filter="data")
    done.touch()
    return folder / archive.folder


def download(archive: Archive, path: Path) -> None:
    """Download ``archive`` to ``path``; only a copy with the right checksum gets the final name."""
    with atomic_write(path) as part:
        try:
            with urllib.request.urlopen(archive.url, timeout=60) as response, open(part, "wb") as sink:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, desc=f"download {path.name}", unit="B", unit_scale=True) as bar:
                    while chunk := response.read(1 << 20):
                        sink.write(chunk)
                        bar.update(len(chunk))
        except OSError as error:
            raise DatasetError(f"cannot download {archive.url}: {error}\n  without network access, fetch it "
                               f"elsewhere and put it at {path}, or unpack it and pass --voc-root/--sbd-root") from None
        found = md5sum(part)
        if found != archive.md5:
            raise DatasetError(f"{archive.url}: checksum mismatch (MD5 {found}, expected {archive.md5}); "
                               "the download is corrupt or the file changed upstream: removed it, try again")


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
