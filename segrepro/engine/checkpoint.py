"""Checkpoints: written atomically (:func:`segrepro.files.atomic_write`), the last N kept plus the best,
loaded with ``weights_only=True`` (no arbitrary unpickling)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..files import atomic_write

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves a
    half-written checkpoint under the final name."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path) -> dict:
    """Load a checkpoint safely; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or one holding arbitrary objects
        raise ValueError(f"cannot load checkpoint {path}: {exc}") from exc


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

    def path(self, step: int) -> Path:
        return self.folder / f"step_{step:07d}.pt"

    def save(self, state: dict, step: int) -> Path:
        path = self.path(step)
        atomic_save(state, path)
        for _, old in self.steps()[:-self.keep_last]:
            old.unlink()
        return path

    def save_best(self, state: dict) -> Path:
        path = self.folder / "best.pt"
        atomic_save(state, path)
        return path
