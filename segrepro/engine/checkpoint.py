"""Checkpoints: written atomically and durably (:func:`segrepro.files.atomic_write`: fsync of the file
and of its folder around the rename), the last N kept plus the best (older ones deleted only once the
new one reads back whole), loaded with ``weights_only=True`` (no arbitrary unpickling); ``resume=auto``
takes the newest one that loads."""
from __future__ import annotations

import logging
import re
import shutil
import zipfile
from pathlib import Path

import torch

from ..files import atomic_write, load_torch_file

log = logging.getLogger(__name__)

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves a
    half-written checkpoint under the final name."""
    with atomic_write(path, "wb") as file:  # our file object: closed even when torch.save fails midway
        torch.save(obj, file)


def load_checkpoint(path) -> dict:
    """Load a checkpoint safely (tensors and plain containers only); errors name the file and say what is wrong."""
    return load_torch_file(path, "checkpoint")


def resume_checkpoint(resume, folder, verify: bool = True) -> Path | None:
    """The checkpoint ``trainer.resume`` names: None for ``none``/null (or ``auto`` with nothing in
    ``folder``), the newest ``step_*.pt`` of ``folder`` that loads for ``auto`` (with ``verify=False``: the
    newest one, unread; a ValueError when there are some and none loads), else the file it names."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        checkpoints = CheckpointDir(folder)
        if not verify or checkpoints.latest() is None:
            return checkpoints.latest()
        path = checkpoints.latest_loadable()
        if path is None:  # starting afresh here would put a random-init run where the checkpoints were
            raise ValueError(f"trainer.resume=auto: none of the {len(checkpoints.steps())} checkpoints in {folder} "
                             "loads (each is logged above with why); move them away to start this run afresh, "
                             "or give trainer.resume=PATH of a good one")
        return path
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: no such checkpoint file; expected auto (the newest "
                                "checkpoint of the run folder), none, or the path of a checkpoint")
    return path


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only folder): names the folder and its free space."""


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole zip archive as ``torch.save`` writes (its central directory, at the
    end, reads back): a file cut short by a crash or a full disk is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return len(archive.namelist()) > 0
    except (OSError, zipfile.BadZipFile):
        return False


class CheckpointDir:
    """``step_XXXXXXX.pt`` files (the last ``keep_last`` kept) and ``best.pt`` in one folder."""

    def __init__(self, folder, keep_last: int = 2):
        self.folder = Path(folder)
        self.keep_last = max(1, keep_last)

    def steps(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := STEP_FILE.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        steps = self.steps()
        return steps[-1][1] if steps else None

    def latest_loadable(self) -> Path | None:
        """The newest checkpoint that loads; each newer one that does not is logged, naming the file and why."""
        for _, path in reversed(self.steps()):
            try:
                load_checkpoint(path)
                return path
            except ValueError as error:
                log.warning("skipping %s", error)
        return None

    def path(self, step: int) -> Path:
        return self.folder / f"step_{step:07d}.pt"

    def save(self, state: dict, step: int) -> Path:
        """Write ``step``'s checkpoint; only once it reads back whole, delete the ones beyond ``keep_last``."""
        path = self.path(step)
        self._write(state, path)
        if is_complete(path):
            for _, old in self.steps()[:-self.keep_last]:
                old.unlink()
        return path

    def save_best(self, state: dict) -> Path:
        path = self.folder / "best.pt"
        self._write(state, path)
        return path

    def _write(self, state: dict, path: Path) -> None:
        try:
            atomic_save(state, path)
        except (OSError, RuntimeError) as error:  # no space, read-only, quota (torch.save's writer raises
            # RuntimeError for a full disk): the previous files are untouched
            existing = next(p for p in (self.folder, *self.folder.parents) if p.exists())
            free = shutil.disk_usage(existing).free
            kept = self.latest()
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
            if kept is not None and free < kept.stat().st_size:
                reason = f"the disk is full: less free space than one checkpoint ({reason})"
            raise CheckpointWriteError(
                f"cannot write checkpoint {path.name} into {self.folder}: {reason}; {free / 2**20:.1f} MiB free "
                f"there. The previous checkpoint is intact: {kept or 'none (no checkpoint was written yet)'}") from None
