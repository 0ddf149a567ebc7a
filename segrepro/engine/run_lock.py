"""One run folder, one writer: ``segrepro train`` holds an exclusive lock on ``<run folder>/.lock``
while it runs, so a second process on the same folder stops at once instead of writing checkpoints
and events beside the first.

The lock is ``flock`` on the open file, which the kernel releases when the holder exits or dies, so
a lock left by a crashed process never blocks a resume; the file's text (PID, host, start time)
only names the holder in the error. Under torchrun, rank 0 holds it for the group. ``flock`` is not
honoured across hosts on some network file systems (NFS without lock support).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process is training in this run folder."""


class RunLock:
    def __init__(self, run_dir, rank: int | None = None):
        self.path = Path(run_dir) / LOCK_FILE
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.file = None

    def __enter__(self) -> "RunLock":
        if self.rank != 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown process"
            file.close()
            raise RunFolderBusy(f"{self.path.parent} is in use by another segrepro train ({holder}); wait for it "
                                "to finish or stop it, or train in another folder (hydra.run.dir=...)") from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
