"""Stopping on a cluster's signal: SIGTERM or SIGUSR1 (what SLURM sends before a time limit or a
preemption, with ``--signal``) asks the trainer to finish its step, write a checkpoint and exit
with :data:`PREEMPTED_EXIT_CODE`; ``trainer.resume=auto`` then continues exactly.

While the training loop runs (:meth:`StopSignal.armed`) the handler only records the signal; the
loop asks :meth:`StopSignal.agreed` after each step, which under DDP takes the maximum over the
ranks, so every rank stops after the same step. Outside the loop (start-up, evaluation) a signal
acts as it would without segrepro: the process ends at once, as torchrun expects when it stops
a group whose other worker died.
"""
from __future__ import annotations

import contextlib
import signal
import threading

import torch
import torch.distributed as dist

# EX_TEMPFAIL (sysexits.h): "a temporary failure; try again later". Not 0 (the run is not done),
# not 1 (a user error), not 128 + signal (killed without a checkpoint).
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; the message says where and how to resume."""

    exit_code = PREEMPTED_EXIT_CODE


class StopSignal:
    """Handles SIGTERM / SIGUSR1 while installed (``with StopSignal() as stop:``) and restores the previous
    handlers on exit; the signal is recorded inside ``with stop.armed():``, and acts as before
    elsewhere. Outside the main thread (where Python cannot set handlers) it records nothing."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        self._armed = False

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def armed(self):
        self._armed = True
        try:
            yield self
        finally:
            self._armed = False

    def _record(self, number, frame) -> None:
        if self._armed:
            self.received = number
            return
        previous = self._previous.get(number, signal.SIG_DFL)
        if callable(previous):
            previous(number, frame)
        else:  # the default action (end the process), or ignore
            signal.signal(number, previous)
            signal.raise_signal(number)
            signal.signal(number, self._record)

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank received a stop signal (every rank gets the same answer)."""
        stop = self.received is not None
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(stop)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
