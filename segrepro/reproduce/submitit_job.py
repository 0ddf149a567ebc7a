"""What runs inside a job of ``segrepro reproduce launcher=submitit``: one run of a table, the same
``python -m segrepro.train OVERRIDES`` (or ``segrepro.evaluate``) the local launcher runs, started
as a subprocess by each task of the job.

**torch.distributed.** A job has one task per GPU (``tasks_per_node`` = GPUs per node, as
``torchrun --nproc_per_node``). Each task gives its run (in the run's environment only) what
:class:`submitit.helpers.TorchDistributedEnvironment` reads from the scheduler (``MASTER_ADDR``: the
job's first node; ``MASTER_PORT``; ``RANK``; ``WORLD_SIZE``; ``LOCAL_RANK``; ``LOCAL_WORLD_SIZE``)
and starts the run, which joins the process group from these variables as it does under torchrun
(``segrepro/engine/distributed.py``). Every GPU of the node stays visible, so that each rank takes
``cuda:LOCAL_RANK``, as under torchrun. Also as torchrun does, with several tasks on a node
``OMP_NUM_THREADS`` is set to 1 unless it is set already. On CPUs this makes a 2-task job
end with bitwise the weights of ``torchrun --nproc_per_node 2`` on the same command.

**Signals.** Two mechanisms meet here: submitit's and the trainer's own.

- **USR2 is submitit's** timeout and preemption signal. SLURM sends it ``signal_delay_s`` (90 s)
  before the time limit, and at a preemption where the cluster sets
  ``SlurmctldParameters=preempt_send_user_signal``. Submitit's local executor sends it 30 s before
  ``timeout_min``. SLURM signals every process of the job step, so the run is started with USR2
  ignored (its DataLoader workers inherit that): only the task acts on it. In task 0, submitit's
  handler calls :meth:`RunJob.checkpoint`. That method sends SIGTERM to the run (not SIGUSR1,
  which NCCL may catch, as submitit's code warns) and waits for the run to exit. Inside its training loop the run finishes the step, writes a checkpoint and exits with
  code 75 (``segrepro/engine/preemption.py``; under DDP every rank stops after the same step).
  The method then returns the same run as a new submission. Submitit saves that submission and
  requeues the job (``scontrol requeue``; the local executor restarts the job's tasks). The
  requeued run resumes from the checkpoint with the ``trainer.resume=auto`` of its overrides.
  Submitit's handler does nothing in the other tasks: their runs stop together with rank 0's.
  The wait is at most ``STOP_WAIT_S`` (60 s of SLURM's 90): a run that stops only after a long
  periodic evaluation (the stop waits for the step's end) is requeued anyway, before the time limit
  kills the job unrequeued, and resumes from its last periodic checkpoint.
  Outside the training loop (start-up, the final evaluation) the SIGTERM ends the run at once;
  the requeued run redoes what was cut short, and no training step is lost.
- **SIGTERM or SIGUSR1 from elsewhere** (``scancel``, a preemption without the user signal,
  ``--signal=USR1``): submitit only logs a SIGTERM in the task, and the run handles both signals
  itself (a checkpoint, exit code 75). The job then ends with an error that says so. The next
  ``segrepro reproduce`` resubmits the run, or the scheduler requeues the job, and either way the
  run resumes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Optional, Sequence

import submitit

from ..engine.preemption import PREEMPTED_EXIT_CODE

STOP_WAIT_S = 60.0  # the longest RunJob.checkpoint waits for the run's exit, of SLURM's 90 s (signal_delay_s)


def ignore_submitit_signal() -> None:
    """In the run's process, before it starts: ignore submitit's preemption signal (USR2 by default)."""
    signal.signal(getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}"), signal.SIG_IGN)


class RunJob(submitit.helpers.Checkpointable):
    """One run as a submitit job, requeued (:meth:`checkpoint`) on a timeout or preemption.

    ``command`` is the run's command line (``runner.command_line``). ``name`` says which run
    it is in messages (``ce seed 0 (train)``)."""

    def __init__(self, command: Sequence[str], name: str):
        self.command = list(command)
        self.name = name
        self.process: Optional[subprocess.Popen] = None

    def __call__(self) -> float:
        """Run the command in this task with torch.distributed's variables set; its seconds. A
        RuntimeError when it fails or stops early."""
        distributed = submitit.helpers.TorchDistributedEnvironment()
        # the run's environment only: a job of cluster=debug runs in the calling process, whose own
        # environment must not learn a rank (its next torch.distributed start would wait for peers)
        env = {**os.environ, "MASTER_ADDR": distributed.master_addr, "MASTER_PORT": str(distributed.master_port),
               "RANK": str(distributed.rank), "WORLD_SIZE": str(distributed.world_size),
               "LOCAL_RANK": str(distributed.local_rank), "LOCAL_WORLD_SIZE": str(distributed.local_world_size)}
        if distributed.local_world_size > 1:
            env.setdefault("OMP_NUM_THREADS", "1")
        start = time.monotonic()
        self.process = subprocess.Popen(self.command, env=env, preexec_fn=ignore_submitit_signal)
        code = self.process.wait()
        if code == PREEMPTED_EXIT_CODE:
            raise RuntimeError(f"{self.name} stopped on a signal after writing a checkpoint (exit code {code}); it "
                               "resumes when submitit requeues the job or segrepro reproduce submits it again")
        if code != 0:
            raise RuntimeError(f"{self.name} failed (exit code {code}); its output is above in this job's logs")
        return time.monotonic() - start

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's USR2 handler in task 0 (the module docstring): stop the run with
        SIGTERM and wait until it has exited (code 75 once its checkpoint is written), at most
        ``STOP_WAIT_S``; the same run, which submitit requeues."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            # WNOWAIT: wait without reaping, as the handler may interrupt Popen.wait() holding its lock
            while os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                if time.monotonic() > deadline:
                    print(f"{self.name} has not stopped {STOP_WAIT_S:g} s after SIGTERM; requeued now, it resumes "
                          "from its last checkpoint", flush=True)
                    break
                time.sleep(0.1)
        return submitit.helpers.DelayedSubmission(RunJob(self.command, self.name))
