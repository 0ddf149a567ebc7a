"""Atomic file writes: a crash or an error never leaves a half-written file under the final name.

:func:`atomic_write` writes into a temporary file in the destination's folder (same file
system, so the rename is atomic), flushes and fsyncs it, then ``os.replace``s it onto the
final name; on any error the temporary file is removed and an existing file is left as it was::

    with atomic_write(path) as tmp:      # tmp: the temporary file's Path
        torch.save(state, tmp)           # or image.save(tmp, format="PNG"), ...

    with atomic_write(path, "w") as f:   # with a mode: an open file object
        f.write(text)
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
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
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk before it is renamed (a crash then leaves old or new)."""
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
