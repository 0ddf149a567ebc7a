"""Running a table's runs: each one a subprocess (``python -m segrepro.train ...`` or
``segrepro.evaluate``), so a run that crashes ends only itself and the table goes on with the next,
every run starts from a clean process (memory, Hydra's state), and the command that runs is the one
``dry_run=true`` prints. Finished runs are skipped; an interrupted one resumes (``trainer.resume=auto``
in its command). Before any training, :func:`check_data` builds every dataset the unfinished runs
read, so a missing dataset stops the table at once with the dataset's message (which names the
prepare command) on one line; :func:`check_configs` stops it when a run folder holds a run of
another config.

Each run folder gets ``reproduce.json``: the command, the scale, the git commit and time of each
start, and the seconds and time of the finish.
"""
from __future__ import annotations

import datetime
import json
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

from omegaconf import OmegaConf

from ..cli import COMMANDS
from ..config import ConfigError
from ..data import build_dataset
from ..engine.preemption import Preempted
from ..files import write_json
from .plan import Run
from .spec import REPO

RECORD = "reproduce.json"


class Stopped(Exception):
    """The table stopped before its last run (Ctrl-C, or a preempted run): the same command resumes it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def check_data(runs: Sequence[Run]) -> None:
    """Build the train and validation datasets of every stage of the unfinished training runs (each
    once); a :class:`ConfigError` on one line naming the row if one cannot be read."""
    seen = set()
    for run in runs:
        if run.kind != "train" or run.finished():
            continue
        for cfg in run.stages:
            for split in dict.fromkeys((cfg.data.train_split, cfg.data.val_split)):
                key = (OmegaConf.to_yaml(cfg.data), split)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    build_dataset(cfg.data, split, train=False)
                except (ValueError, OSError) as exc:
                    raise ConfigError(f"{run.describe()} reads {cfg.data.name} {split}: {one_line(exc)}") from None


def check_configs(runs: Sequence[Run]) -> None:
    """A :class:`ConfigError` naming every training folder that holds a run of another config than the
    table's (an experiment file, recipe or default edited since it ran, or a run started by hand with
    other overrides) and the keys that differ: its number would be reported, or its training
    continued, as the row's."""
    stale = [(run, changes) for run in runs if (changes := run.config_changes())]
    if not stale:
        return
    lines = []
    for run, changes in stale:
        shown = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        lines.append(f"  {run.describe()}: {run.folder} ({shown}{more})")
    raise ConfigError("these folders hold runs of another config than the table's (the saved value -> the "
                      "table's):\n" + "\n".join(lines) + "\nMove them away (or delete them) to run these rows "
                      "again, or give another root= for a table of its own.")


def git_commit() -> Optional[str]:
    """The checkout's commit, ``+dirty`` when tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def read_record(run: Run) -> dict:
    """The run folder's ``reproduce.json``; ``{}`` if it has none (e.g. a run started by hand from
    a ``dry_run`` command)."""
    path = run.folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def command_line(run: Run) -> list[str]:
    """``python -m segrepro.train OVERRIDES`` (or ``segrepro.evaluate``) with this Python: what runs ``run``."""
    return [sys.executable, "-m", COMMANDS[run.kind][0], *run.overrides]


def launch(run: Run) -> int:
    """Run ``run`` as a subprocess of this Python (its output goes to this terminal); its exit code."""
    return subprocess.run(command_line(run)).returncode


def record_start(run: Run, scale: str, commit: Optional[str], **details) -> None:
    """Add a start (the commit, the time and ``details``) to the run folder's ``reproduce.json``."""
    record = read_record(run) or {"rows": list(run.rows), "seed": run.seed, "scale": scale,
                                  "command": run.command, "starts": []}
    record["starts"].append({"commit": commit, "time": now(), **details})
    write_json(record, run.folder / RECORD)


def record_finish(run: Run, seconds: float) -> None:
    """Add the seconds and time of the finish to the run folder's ``reproduce.json``."""
    write_json({**read_record(run), "seconds": round(seconds, 1), "finished": now()}, run.folder / RECORD)


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def say(line: str) -> None:
    print(line, flush=True)  # before the subprocess writes to the same terminal or pipe


def execute(runs: Sequence[Run], scale: str) -> list[Run]:
    """Run every unfinished run in order, one progress line each (row, seed, runs left, ETA); the
    runs that failed. :class:`Stopped` on Ctrl-C or a preempted run."""
    commit = git_commit()
    left = sum(not run.finished() for run in runs)
    seconds: list[float] = []
    failed = []
    for index, run in enumerate(runs, start=1):
        head = f"[{index}/{len(runs)}] {run.describe()}"
        if run.finished():
            say(f"{head}: finished, skipped")
            continue
        left -= 1
        if run.needs is not None and not run.needs.finished():
            say(f"{head}: not run, {run.needs.describe()} has not finished")
            failed.append(run)
            continue
        eta = statistics.mean(seconds) * (left + 1) if seconds else None
        say(f"{head}: running, {left} left after it, ETA {duration(eta)}; {run.folder}")
        record_start(run, scale, commit)
        start = time.monotonic()
        try:
            code = launch(run)
        except KeyboardInterrupt:
            raise Stopped(f"interrupted during {run.describe()}; the same command resumes it", 130) from None
        if code == Preempted.exit_code:
            raise Stopped(f"{run.describe()} was preempted (a checkpoint was written); the same command resumes it",
                          code)
        if code != 0 or not run.finished():
            say(f"{head}: failed (exit code {code}); going on with the next run")
            failed.append(run)
            continue
        seconds.append(time.monotonic() - start)
        record_finish(run, seconds[-1])
    return failed
