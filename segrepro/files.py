"""Files: atomic writes (a crash or an error never leaves a half-written file under the final name),
and safe reads of ``torch.save`` files (:func:`load_torch_file`).

:func:`atomic_write` writes into a temporary file in the destination's folder (same file
system, so the rename is atomic), flushes and fsyncs it, then ``os.replace``s it onto the
final name and fsyncs the folder; on any error the temporary file is removed and an existing file is left as it was::

    with atomic_write(path) as tmp:      # tmp: the temporary file's Path
        torch.save(state, tmp)           # or image.save(tmp, format="PNG"), ...

    with atomic_write(path, "w") as f:   # with a mode: an open file object
        f.write(text)
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import zipfile
from pathlib import Path
from typing import Iterator, Optional


@contextlib.contextmanager
def atomic_write(path, mode: Optional[str] = None, fsync: bool = True, **open_kwargs) -> Iterator:
    """Write ``path`` atomically (see the module docstring).

    Without ``mode`` the block gets the temporary file's :class:`~pathlib.Path` and writes it by
    name (``torch.save``, ``PIL.Image.save``, ...); with ``mode`` (``"w"``, ``"wb"``, ...) it gets
    the temporary file opened with ``open_kwargs``. The temporary file keeps ``path``'s extension
    (for writers that choose the format by it). The parent folder is created if missing.
    ``fsync=False`` skips the flush to disk (many small files that can be made again): the file is
    still never seen half-written, but a power loss may leave it empty.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    # created here (unique: O_EXCL) with the umask's permissions, which mkstemp's 0600 would not give
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if mode is None:
            yield tmp
        else:
            with open(tmp, mode, **open_kwargs) as file:
                yield file
                file.flush()
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` to the disk: a file's data before it is renamed, a folder's entries after the
    rename (a crash then leaves the old file or the new one, never a name without its data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(obj, path) -> None:
    """``obj`` as indented JSON in ``path``, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as file:
        json.dump(obj, file, indent=2)
        file.write("\n")


# ---------------------------------------------------------------- safe reads of torch.save files
WHAT_A_CHECKPOINT_IS = ("A segrepro checkpoint is a step_XXXXXXX.pt or best.pt that training writes into "
                        "<run folder>/checkpoints/.")


def load_torch_file(path, what: str = "checkpoint"):
    """``torch.load`` of a checkpoint or weights file with ``weights_only=True`` (tensors and plain
    containers only: a file cannot run code), after checking every member's CRC-32; an error names
    the file and says what is wrong with it, in words."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    damaged = damaged_member(path)
    if damaged is not None:
        raise ValueError(f"cannot load {what} {path}: it is damaged ({damaged} fails its CRC check). "
                         f"{WHAT_A_CHECKPOINT_IS}")
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty, damaged or not a torch file, or holding arbitrary objects
        raise ValueError(f"cannot load {what} {path}: {why_not_loadable(path, exc)}. {WHAT_A_CHECKPOINT_IS}") from None


def damaged_member(path: Path) -> str | None:
    """The first member of a zip checkpoint whose bytes do not match their CRC-32 (``torch.load`` does
    not check them: a flipped bit in a tensor would load silently); None if all match or ``path`` is
    not a zip archive (then ``torch.load`` says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError):
        return None


def why_not_loadable(path: Path, error: Exception) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in words."""
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as file:
        legacy_pickle = file.read(1) == pickle.PROTO  # torch.save's format before zip archives
    if not zipfile.is_zipfile(path) and not legacy_pickle:
        return "it is not a zip archive as torch.save writes: not a PyTorch file, or one cut short"
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
        return ("it holds Python objects other than tensors, numbers, strings and containers; segrepro does not "
                "unpickle those, because loading them could run code from the file")
    return f"it is damaged ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'})"
