"""``segrepro reproduce ... launcher=submitit``: each unfinished run of a table becomes its own
submitit job (:mod:`.submitit_job`). ``cluster=slurm`` submits them with sbatch, one job array per
call. ``cluster=local`` runs them as processes on this machine through submitit's local executor,
one job after another (that executor would start every job at once, each seeing the same first
``gpus_per_job`` GPUs). ``cluster=debug`` runs them in this process (submitit's executor for
debuggers). By default submitit picks: slurm where ``srun`` is on the PATH, local elsewhere.

- **Resources.** A job asks for ``gpus_per_job`` GPUs spread evenly over ``nodes`` nodes, one task per
  GPU (one task per node without GPUs), and ``timeout_min`` minutes. At the time limit, or at a
  preemption, submitit checkpoints the job and requeues it, and the run resumes
  (:mod:`.submitit_job`).
- **Evaluation-only runs** (SSL Table 5's CRF rows) are submitted once the training whose checkpoint
  they read has finished: later in the same call when it waits, else by a later call.
- **Never twice.** The job id, the cluster and the job's log go into the run folder's
  ``reproduce.json`` (its ``starts``). A later call asks SLURM (sacct, through submitit) for the
  state of each unfinished run's last job. A run whose job is still pending, running or requeued is
  not submitted again. Jobs of ``cluster=local`` and ``debug`` end with the call that started them,
  because that call waits for them.
- **Waiting.** ``wait=true`` (the default except on SLURM) waits for the jobs, with one line per job
  as it ends, and the report then holds every run. ``wait=false`` returns once the jobs are
  submitted; the same command run later collects what has finished into the report.
- **Logs.** The submitit folder is ``<root>/<table>/<scale>/submitit/``. It holds the pickled jobs
  and one ``<job>_<task>_log.out`` and ``.err`` per task.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

import submitit
from submitit.core.utils import FailedJobError

from ..config import ConfigError
from .plan import Run
from .runner import command_line, duration, git_commit, one_line, read_record, record_finish, record_start, say
from .submitit_job import RunJob

CLUSTERS = ("slurm", "local", "debug")
# the options of command.Options that only launcher=submitit reads
OPTIONS = ("cluster", "wait", "gpus_per_job", "nodes", "partition", "timeout_min", "cpus_per_task", "mem_gb",
           "slurm_array_parallelism", "slurm_additional")
POLL_SECONDS = {"slurm": 60, "local": 1, "debug": 0}  # how often a waiting call looks at the jobs


def cluster_of(options) -> str:
    """``cluster=``, or submitit's choice: slurm where ``srun`` is on the PATH, else local."""
    return options.cluster or submitit.AutoExecutor.which()


def check_options(options, named: set[str]) -> None:
    """A :class:`ConfigError` for a launcher=submitit option that does not fit; ``named``: the
    options given on the command line."""
    if options.launcher != "submitit":
        stray = [key for key in OPTIONS if key in named]
        if stray:
            raise ConfigError(f"{stray[0]}= is an option of launcher=submitit; add launcher=submitit or leave it out")
        return
    if options.cluster is not None and options.cluster not in CLUSTERS:
        raise ConfigError(f"cluster={options.cluster}: the clusters are slurm (sbatch), local (processes on this "
                          "machine) and debug (in this process)")
    cluster = cluster_of(options)
    if options.nodes < 1 or (options.nodes > 1 and cluster != "slurm"):
        raise ConfigError(f"nodes={options.nodes}: 1, or more with cluster=slurm")
    if options.gpus_per_job < 0 or options.gpus_per_job % options.nodes:
        raise ConfigError(f"gpus_per_job={options.gpus_per_job} over nodes={options.nodes}: every node gets as many "
                          "GPUs; give 0 or a multiple of nodes")
    if options.timeout_min < 1:
        raise ConfigError(f"timeout_min={options.timeout_min}: at least 1")
    if options.wait is False and cluster != "slurm":
        raise ConfigError(f"wait=false needs cluster=slurm: the jobs of cluster={cluster} end with the command "
                          "that started them")
    if cluster == "slurm" and submitit.SlurmExecutor.affinity() < 0:
        raise ConfigError("cluster=slurm, but srun is not on the PATH: run this on a SLURM login node, or use "
                          "cluster=local")


def make_executor(options, folder: Path, name: str) -> submitit.AutoExecutor:
    """The submitit executor of ``options`` (checked by :func:`check_options`), its files in ``folder``."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster_of(options))
    gpus_per_node = options.gpus_per_job // options.nodes
    executor.update_parameters(  # None: not set (the cluster's default)
        name=name, timeout_min=options.timeout_min, nodes=options.nodes, gpus_per_node=gpus_per_node or None,
        tasks_per_node=max(1, gpus_per_node), cpus_per_task=options.cpus_per_task, mem_gb=options.mem_gb,
        slurm_partition=options.partition, slurm_array_parallelism=options.slurm_array_parallelism,
        slurm_additional_parameters=options.slurm_additional)
    return executor


def queued_jobs(runs: Sequence[Run], cluster: str, logs: Path) -> dict[Run, submitit.Job]:
    """The unfinished runs whose last job (their ``reproduce.json``) SLURM still has pending, running
    or requeued, with that job."""
    if cluster != "slurm":
        return {}
    jobs = {}
    for run in runs:
        start = (read_record(run).get("starts") or [{}])[-1]
        if not run.finished() and start.get("cluster") == "slurm":
            jobs[run] = submitit.SlurmJob(folder=logs, job_id=start["job"])
    # every job is known to submitit's watcher before the first question: one sacct call for all
    return {run: job for run, job in jobs.items() if still_queued(run, job)}


# squeue's states of a job SLURM still holds; a job it no longer has gives "Invalid job id specified"
QUEUED_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def still_queued(run: Run, job: submitit.Job) -> bool:
    """Whether SLURM still has ``job`` pending, running or requeued: sacct's answer, or squeue's for a
    job sacct does not know (submitit's UNKNOWN: no accounting database, records purged, sacct failing),
    which would otherwise never be submitted again. When neither can tell, the job counts as queued
    (never submitted twice) and a line says so."""
    if job.watcher.is_done(job.job_id):
        return False
    if job.state.upper() != "UNKNOWN":
        return True
    try:
        squeue = subprocess.run(["squeue", "--noheader", "--jobs", job.job_id, "--format=%T"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        answer = f"squeue failed ({error})"
    else:
        states = set(squeue.stdout.split())
        if squeue.returncode == 0 and states & QUEUED_STATES:
            return True
        if (squeue.returncode == 0 and states) or "invalid job id" in squeue.stderr.lower():
            say(f"{run.describe()}: job {job.job_id} is unknown to sacct and squeue has it "
                f"{'/'.join(sorted(states)).lower() or 'no longer'}: it has ended")
            return False
        answer = f"squeue answered {one_line(squeue.stderr or squeue.stdout) or 'nothing'}"
    say(f"{run.describe()}: job {job.job_id} is unknown to sacct and {answer}; not submitted again "
        "(once it has ended for sure, move the run's reproduce.json away to submit it)")
    return True


def submit(runs: Sequence[Run], executor: submitit.AutoExecutor, scale: str) -> dict[Run, submitit.Job]:
    """Submit ``runs``, one job each (one job array on SLURM), and record each job in its run's
    ``reproduce.json``; the jobs."""
    if not runs:
        return {}
    commit = git_commit()
    try:
        # clean_env: SLURM_* and torch.distributed variables of this shell (inside an allocation, or torchrun) stay out
        with submitit.helpers.clean_env(), executor.batch():
            jobs = [executor.submit(RunJob(command_line(run), run.describe())) for run in runs]
    except FailedJobError as exc:  # sbatch refused them
        raise ConfigError(f"the jobs were not submitted: {one_line(exc)}; check partition=, gpus_per_job=, "
                          "timeout_min=, mem_gb=, slurm_additional=") from None
    for run, job in zip(runs, jobs):
        record_start(run, scale, commit, cluster=executor.cluster, job=job.job_id,
                     log=str(job.task(0).paths.stdout))
        say(f"{run.describe()}: submitted as job {job.job_id}")
    return dict(zip(runs, jobs))


def last_line(path: Path) -> str:
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "no output"


def collect(jobs: dict[Run, submitit.Job], poll_seconds: float) -> list[Run]:
    """Wait for ``jobs``, one line as each ends; record the seconds of each run that finished; the
    runs that did not."""
    run_of = {job: run for run, job in jobs.items()}
    failed = []
    ended = submitit.helpers.as_completed(list(jobs.values()), poll_frequency=poll_seconds)
    for index, job in enumerate(ended, start=1):
        run, first_task = run_of[job], job.task(0)
        head = f"[{index}/{len(jobs)}] {run.describe()}"
        if run.finished() and first_task.exception() is None:
            seconds = first_task.result()
            record_finish(run, seconds)
            say(f"{head}: finished (job {job.job_id}, {duration(seconds)})")
        else:
            failed.append(run)
            say(f"{head}: did not finish (job {job.job_id}): {last_line(first_task.paths.stderr)}; "
                f"its log: {first_task.paths.stderr}")
    return failed


def execute(runs: Sequence[Run], scale: str, options, folder: Path) -> list[Run]:
    """Submit the unfinished runs that have no job pending or running (an evaluation once the
    training it reads has finished); with ``wait``, wait for them and for the evaluations they
    unblock. The runs that did not finish (none when not waiting: they are still to come)."""
    logs = folder / "submitit"
    executor = make_executor(options, logs, name=f"segrepro-{folder.parent.name}-{folder.name}")
    wait = options.wait if options.wait is not None else executor.cluster != "slurm"
    say(f"launcher=submitit, cluster={executor.cluster}; the jobs' logs: {logs}")
    for run in runs:
        if run.finished():
            say(f"{run.describe()}: finished, skipped")
    jobs = queued_jobs(runs, executor.cluster, logs)
    for run, job in jobs.items():
        say(f"{run.describe()}: job {job.job_id} is {job.state.lower()}, not submitted again")
    failed: list[Run] = []
    while True:
        ready = [run for run in runs if run not in jobs and run not in failed and not run.finished()
                 and (run.needs is None or run.needs.finished())]
        if executor.cluster == "local":  # submitit's local executor starts every job at once, each on GPU 0..
            ready = ready[:1]
        jobs.update(submit(ready, executor, scale))
        if not wait or not jobs:
            break
        failed += collect(jobs, POLL_SECONDS[executor.cluster])
        jobs = {}
    blocked = [run for run in runs if run not in jobs and run not in failed and not run.finished()]
    for run in blocked:  # evaluations whose training has not finished
        say(f"{run.describe()}: not submitted, {run.needs.describe()} has not finished")
    if jobs:
        say(f"{len(jobs)} jobs pending or running; run the same command again to collect them into the table")
        return failed
    return failed + blocked
