"""Prepare Cityscapes for segrepro: unpack the official zips and write the train-id labels.

    python scripts/prepare_cityscapes.py --root data/cityscapes

Cityscapes needs a (free) login, so this script cannot download it: sign in at
https://www.cityscapes-dataset.com/downloads/, download ``leftImg8bit_trainvaltest.zip``
(11 GB) and ``gtFine_trainvaltest.zip`` (241 MB), and put both into ``--root``.
The script unpacks them there (``leftImg8bit/``, ``gtFine/``) and writes, next to
every ``*_gtFine_labelIds.png``, the ``*_gtFine_labelTrainIds.png`` that the
dataset reads (the official mapping to 19 train ids, 255 elsewhere). Work already
done is skipped, so it is safe to run again.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from tqdm import tqdm

from segrepro.data.cityscapes import LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX, label_ids_to_train_ids
from segrepro.data.io import DatasetError, read_label, write_label

ZIPS = {"leftImg8bit": "leftImg8bit_trainvaltest.zip", "gtFine": "gtFine_trainvaltest.zip"}
SPLIT_SIZES = {"train": 2975, "val": 500, "test": 1525}
DOWNLOAD_PAGE = "https://www.cityscapes-dataset.com/downloads/"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the Cityscapes folder (data.root) holding the zips")
    root = Path(parser.parse_args(argv).root)
    try:
        for folder, archive in ZIPS.items():
            unpack(root, folder, archive)
        for split in SPLIT_SIZES:
            convert_split(root, split)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done: train with data=cityscapes data.root={root}")
    return 0


def unpack(root: Path, folder: str, archive: str) -> None:
    """Unpack ``archive`` into ``root`` unless that was done (a marker file records completion)."""
    done = root / f".{archive}.unpacked"
    if done.exists() or ((root / folder).is_dir() and not (root / archive).exists()):
        return
    if not (root / archive).exists():
        raise DatasetError(
            f"{root / folder} and {root / archive} not found. Cityscapes needs a login: sign in at "
            f"{DOWNLOAD_PAGE}, download {' and '.join(ZIPS.values())}, put them into {root}, "
            f"and run this again.")
    try:
        with zipfile.ZipFile(root / archive) as zipped:
            for member in tqdm(zipped.infolist(), desc=f"unpack {archive}", unit="file"):
                zipped.extract(member, root)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{root / archive} is not a valid zip ({error}); download it again") from None
    done.touch()


def convert_split(root: Path, split: str) -> None:
    """Write the missing ``*_labelTrainIds.png`` of ``gtFine/<split>``."""
    sources = sorted((root / "gtFine" / split).glob(f"*/*{LABEL_IDS_SUFFIX}"))
    if not sources:
        print(f"gtFine/{split}: no *{LABEL_IDS_SUFFIX} files")
        return
    todo = [s for s in sources if not s.with_name(s.name.replace(LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX)).exists()]
    for source in tqdm(todo, desc=f"train ids {split}", unit="label"):
        target = source.with_name(source.name.replace(LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX))
        write_label(target, label_ids_to_train_ids(read_label(source), source), fsync=False)
    note = "" if len(sources) == SPLIT_SIZES[split] else f" (the full dataset has {SPLIT_SIZES[split]})"
    print(f"gtFine/{split}: {len(sources)} labels{note}, {len(todo)} converted now")


if __name__ == "__main__":
    sys.exit(main())
