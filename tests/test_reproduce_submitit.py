"""``segrepro reproduce launcher=submitit``: the option checks, the sbatch script and the
never-twice rule against stand-ins for sbatch and sacct, the job's torch.distributed variables and
signals, and, with submitit's local executor, a smoke table end to end and a job that is signalled,
checkpointed, requeued by submitit and resumed (slow: real trainings in subprocesses)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from segrepro.engine.preemption import PREEMPTED_EXIT_CODE
from segrepro.reproduce import command, plan, submitit_launcher
from segrepro.reproduce.runner import read_record
from segrepro.reproduce.spec import Scale, load_scale, load_table
from segrepro.reproduce.submitit_job import RunJob

from .test_fault_tolerance import children
from .test_reproduce import finish, reproduce, table_lines

@pytest.mark.parametrize("args, message", [
    (["launcher=slurm"], "launcher=slurm: local (one run after another here) or submitit (a job each)"),
    (["cluster=slurm"], "cluster= is an option of launcher=submitit; add launcher=submitit or leave it out"),
    (["launcher=submitit", "cluster=lsf"], "cluster=lsf: the clusters are slurm (sbatch), local"),
    (["launcher=submitit", "cluster=local", "wait=false"], "wait=false needs cluster=slurm"),
    (["launcher=submitit", "cluster=local", "nodes=2"], "nodes=2: 1, or more with cluster=slurm"),
    (["launcher=submitit", "cluster=slurm", "nodes=2", "gpus_per_job=3"],
     "gpus_per_job=3 over nodes=2: every node gets as many GPUs; give 0 or a multiple of nodes"),
    (["launcher=submitit", "timeout_min=0"], "timeout_min=0: at least 1"),
    (["launcher=submitit", "cluster=slurm"], "cluster=slurm, but srun is not on the PATH"),
])
def test_submitit_options_are_checked(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    assert reproduce(monkeypatch, "table=ssl_table2", "dry_run=true", *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun``, ``sbatch``, ``sacct`` and ``squeue`` stand-ins on the PATH: sbatch keeps each script it
    gets (``sbatch_<n>.sh``) and answers job 4242, 4243, ...; sacct prints the file ``sacct.txt``;
    squeue answers RUNNING for a job id listed in ``squeue.txt``, else fails as for an ended job (or
    with a time-out while ``squeue.down`` exists).
    Submitit's sacct watcher starts empty."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": "exit 0",
        "sbatch": f'n=$(ls {bin_dir} | grep -c "^sbatch_"); cp "$1" {bin_dir}/sbatch_$n.sh; '
                  'echo "Submitted batch job $((4242 + n))"',
        "sacct": f"cat {bin_dir}/sacct.txt",
        "squeue": f'[ -f {bin_dir}/squeue.down ] && {{ echo "Socket timed out" >&2; exit 1; }}; '
                  f'grep -qx -- "$3" {bin_dir}/squeue.txt && echo RUNNING || '
                  '{ echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.SlurmJob, "watcher", SlurmInfoWatcher(delay_s=600))
    return bin_dir


def test_slurm_jobs_are_submitted_once_and_again_only_when_their_job_has_ended(tmp_path, fake_slurm, monkeypatch,
                                                                                capsys):
    """SSL Table 5's CE row and a CRF row (an evaluation of CE's checkpoint), 2 seeds, on SLURM
    stand-ins: one job array of the two trainings (the evaluations wait for them), the sbatch
    script from the options; nothing submitted while sacct says pending or running; a failed
    training and the evaluation of a finished one submitted by the next call; of two jobs sacct
    does not know, the one squeue still has is left alone and the other submitted again."""
    root = tmp_path / "tables"
    args = ["table=ssl_table5", "scale=smoke", "rows=ce,crf1", "seeds=2", f"root={root}", "launcher=submitit",
            "cluster=slurm", "partition=gpu", "nodes=2", "gpus_per_job=8", "timeout_min=600",
            "slurm_additional={account: lab}"]
    assert reproduce(monkeypatch, *args) == 0  # wait=false on slurm: submit and return
    out = capsys.readouterr().out
    folder = root / "ssl_table5" / "smoke"
    assert "ce seed 0 (train): submitted as job 4242_0" in out and "ce seed 1 (train): submitted as job 4242_1" in out
    assert "crf1+crf2+crf5 seed 0 (eval): not submitted, ce seed 0 (train) has not finished" in out
    assert f"the jobs' logs: {folder / 'submitit'}" in out
    assert "2 jobs pending or running; run the same command again" in out
    assert "| missing |" in table_lines((folder / "table.md").read_text())["ce"]
    sbatch = (fake_slurm / "sbatch_0.sh").read_text().splitlines()
    for line in ("--array=0-1%2", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu",
                 "--time=600", "--signal=USR2@90", "--account=lab", "--job-name=segrepro-ssl_table5-smoke"):
        assert f"#SBATCH {line}" in sbatch
    runs = plan.plan(load_table("ssl_table5"), load_scale("smoke", ""), [0, 1], root, ["ce", "crf1"])
    [start] = read_record(runs[2])["starts"]
    assert (start["job"], start["cluster"]) == ("4242_1", "slurm")
    assert start["log"] == str(folder / "submitit" / "4242_1_0_log.out")

    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|RUNNING|n1\n4242_1|PENDING|None\n")
    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert "ce seed 0 (train): job 4242_0 is running, not submitted again" in out and "job 4242_1 is pending" in out
    assert "submitted as" not in out and not (fake_slurm / "sbatch_1.sh").exists()

    finish(runs[0], 40.0)  # seed 0's training has finished; seed 1's job failed
    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|COMPLETED|n1\n4242_1|FAILED|n2\n")
    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert "ce seed 0 (train): finished, skipped" in out
    assert "crf1+crf2+crf5 seed 0 (eval): submitted as job 4243_0" in out
    assert "ce seed 1 (train): submitted as job 4243_1" in out
    assert [s["job"] for s in read_record(runs[2])["starts"]] == ["4242_1", "4243_1"]

    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n")  # no accounting records
    (fake_slurm / "squeue.txt").write_text("4243_0\n")
    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert "crf1+crf2+crf5 seed 0 (eval): job 4243_0 is unknown, not submitted again" in out
    assert "ce seed 1 (train): job 4243_1 is unknown to sacct and squeue has it no longer: it has ended" in out
    assert "ce seed 1 (train): submitted as job 4244\n" in out  # one job: no array
    assert "crf1+crf2+crf5 seed 0 (eval): submitted" not in out

    (fake_slurm / "squeue.down").write_text("")  # squeue cannot tell: nothing is submitted twice
    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert "ce seed 1 (train): job 4244 is unknown to sacct and squeue answered Socket timed out; not submitted" in out
    assert "submitted as" not in out


def test_a_job_task_runs_the_command_with_submitits_torch_distributed_variables(monkeypatch, capfd):
    """Task 1 of a 2-task job of the local executor: the variables torchrun would set (one OpenMP
    thread per process too), every GPU still visible, submitit's USR2 ignored in the run; an exit
    code other than 0 is an error."""
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "CUDA_VISIBLE_DEVICES": "0,1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)  # restored after the test: the job exports them here
    show = ("import os, signal; print(*(os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', "
            "'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'CUDA_VISIBLE_DEVICES', 'OMP_NUM_THREADS')), "
            "signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN, int(os.environ['MASTER_PORT']) > 0)")
    assert RunJob([sys.executable, "-c", show], "show")() > 0
    assert capfd.readouterr().out.split() == ["1", "2", "1", "2", socket.gethostname(), "0,1", "1", "True", "True"]
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ  # the run's alone: not this process's
    with pytest.raises(RuntimeError, match=r"^broken failed \(exit code 3\)"):
        RunJob([sys.executable, "-c", "raise SystemExit(3)"], "broken")()
    with pytest.raises(RuntimeError, match=r"stopped on a signal after writing a checkpoint \(exit code 75\); it resumes"):
        RunJob([sys.executable, "-c", f"raise SystemExit({PREEMPTED_EXIT_CODE})"], "stopped")()


def test_checkpoint_stops_the_run_waits_for_its_exit_and_returns_the_same_run(tmp_path):
    """What submitit's USR2 handler calls in task 0, with a stand-in for the trainer that exits 75
    on SIGTERM after writing a file: the file is there when checkpoint() returns, and the returned
    submission is the same command in a new job, which pickles."""
    marker = tmp_path / "checkpoint"
    stand_in = (f"import pathlib, signal, sys, time\n"
                f"def stop(*_): time.sleep(0.3); pathlib.Path({str(marker)!r}).write_text('step 7'); sys.exit(75)\n"
                f"signal.signal(signal.SIGTERM, stop); print('ready', flush=True); time.sleep(60)")
    job = RunJob([sys.executable, "-c", stand_in, "trainer.resume=auto"], "ce seed 0 (train)")
    job.process = subprocess.Popen(job.command, stdout=subprocess.PIPE, text=True)
    assert job.process.stdout.readline() == "ready\n"
    delayed = job.checkpoint()
    assert marker.read_text() == "step 7" and job.process.wait(5) == PREEMPTED_EXIT_CODE
    requeued = cloudpickle.loads(cloudpickle.dumps(delayed))
    assert isinstance(requeued.function, RunJob) and requeued.function is not job
    assert requeued.function.command == job.command and requeued.function.process is None
    assert requeued.function.name == "ce seed 0 (train)" and requeued.args == () and requeued.kwargs == {}
    assert isinstance(RunJob(["true"], "idle").checkpoint(), submitit.helpers.DelayedSubmission)  # nothing to stop


def test_checkpoint_requeues_a_run_that_does_not_stop_in_time(monkeypatch, capsys):
    """A run still busy when SIGTERM comes (a long periodic evaluation; here a stand-in that ignores it):
    checkpoint() waits STOP_WAIT_S, no longer, and returns the run for submitit to requeue before the time
    limit would kill the job unrequeued."""
    from segrepro.reproduce import submitit_job

    monkeypatch.setattr(submitit_job, "STOP_WAIT_S", 0.5)
    stand_in = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(60)")
    job = RunJob([sys.executable, "-c", stand_in], "lad5 seed 1 (train)")
    job.process = subprocess.Popen(job.command, stdout=subprocess.PIPE, text=True)
    try:
        assert job.process.stdout.readline() == "ready\n"
        delayed = job.checkpoint()
        assert job.process.poll() is None and delayed.function.command == job.command
        assert "lad5 seed 1 (train) has not stopped 0.5 s after SIGTERM; requeued now" in capsys.readouterr().out
    finally:
        job.process.kill()
        job.process.wait()


@pytest.mark.slow
def test_a_smoke_table_through_submitits_local_executor_and_again(tmp_path, monkeypatch, capsys):
    """SSL Table 2's CE row, 2 seeds, on the synthetic data: two submitit jobs run at once as
    processes here; the report holds the numbers and each run folder its job; the same command
    again submits nothing."""
    root = tmp_path / "tables"
    args = ["table=ssl_table2", "scale=smoke", "rows=ce", "seeds=2", f"root={root}", "launcher=submitit",
            "cluster=local", "gpus_per_job=0"]
    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    folder = root / "ssl_table2" / "smoke"
    assert f"launcher=submitit, cluster=local; the jobs' logs: {folder / 'submitit'}" in out
    assert out.count(": submitted as job ") == 2 and out.count("(train): finished (job ") == 2
    line = table_lines((folder / "table.md").read_text())["ce"]
    assert line.startswith("| ce | DeepLabv3 CE | 76.33 | ") and "(n=2)" in line
    for seed in (0, 1):
        record = json.loads((folder / "ce" / f"seed{seed}" / "reproduce.json").read_text())
        [start] = record["starts"]
        assert start["cluster"] == "local" and record["seconds"] > 0
        assert "Job completed successfully" in Path(start["log"]).read_text()
    pickles = sorted((folder / "submitit").glob("*_submitted.pkl"))

    assert reproduce(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert out.count(": finished, skipped") == 2 and "submitted as" not in out
    assert sorted((folder / "submitit").glob("*_submitted.pkl")) == pickles


def signal_the_task_once_training(run: plan.Run, stopped: list) -> None:
    """Once ``run`` is in its training loop, send USR2 (submitit's signal) to its job's task, as
    SLURM does before a time limit; the task is the child of the local executor's controller,
    whose PID is the job id."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        log = run.folder / "train.log"
        if log.is_file() and "training from step 0" in log.read_text():
            [task] = children(int(read_record(run)["starts"][0]["job"]))
            os.kill(task, signal.SIGUSR2)
            stopped.append(task)
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's task through /proc")
def test_a_signalled_job_checkpoints_is_requeued_by_submitit_and_resumes(tmp_path, monkeypatch):
    """A 12-step smoke run as a job of submitit's local executor gets USR2 during training: it
    stops after the step with a checkpoint (exit code 75), submitit requeues the job (the local
    executor restarts its task) and the run resumes from that checkpoint to the end, in one job
    submitted once."""
    smoke = load_scale("smoke", "")
    overrides = [o for o in smoke.overrides if not o.startswith("trainer.max_iters")]
    scale = Scale("smoke", smoke.description, (*overrides, "trainer.max_iters=12", "trainer.progress=false"))
    [run] = plan.plan(load_table("ssl_table2"), scale, [0], tmp_path, ["ce"])
    options = command.parse(["table=ssl_table2", "launcher=submitit", "cluster=local", "gpus_per_job=0"])
    stopped = []
    signaller = threading.Thread(target=signal_the_task_once_training, args=(run, stopped), daemon=True)
    signaller.start()
    failed = submitit_launcher.execute([run], "smoke", options, tmp_path / "ssl_table2" / "smoke")
    signaller.join()
    assert stopped and failed == [] and run.finished()
    [start] = read_record(run)["starts"]
    log = Path(start["log"]).read_text()
    err = Path(start["log"]).with_suffix(".err").read_text()
    assert "this job is preempted" in err and "Requeued job" in log and "Job completed successfully" in log
    [stop] = [line for line in err.splitlines() if "stopped by SIGTERM after step " in line]
    step = int(stop.split("after step ")[1].split()[0])
    assert 0 < step < 12
    assert f"resumed from {run.folder / 'checkpoints' / f'step_{step:07d}.pt'} at step {step}" in log
