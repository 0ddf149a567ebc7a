"""Training survives what clusters do to it, tested with real processes, signals and file systems:
preemption signals, a worker killed under torchrun, torn checkpoints, a full disk, two writers on
one folder, unreadable data, untrusted files, typos with ``+``."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segrepro.config import ConfigError, check_overrides
from segrepro.engine.checkpoint import CheckpointDir, CheckpointWriteError, load_checkpoint, resume_checkpoint
from segrepro.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
from segrepro.engine.run_lock import RunFolderBusy, RunLock
from segrepro.engine.trainer import Trainer, TrainingStopped
from segrepro.files import load_torch_file, write_json
from segrepro.models import build_model, load_weights
from segrepro.train import run

from .conftest import TINY
from .test_data_voc import VOC_TRAIN, make_voc_tree

SHORT = ["trainer.ckpt_every=1000", "trainer.eval_every=0", "trainer.progress=false", "trainer.keep_last=10"]


def train_process(*args, cwd, module="segrepro.train", launcher=(), env=None):
    return subprocess.Popen([sys.executable, *launcher, "-m", module, *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def wait_for_line(path: Path, text: str, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before '{text}':\n{process.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"'{text}' did not appear in {path}")


def final_weights(run_dir: Path, step: int) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ 1. preemption
@pytest.mark.slow
def test_sigterm_at_a_random_step_checkpoints_exits_75_and_resumes_bitwise(tmp_path):
    args = [*TINY, *SHORT, "trainer.max_iters=60"]
    straight = train_process(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.wait(600) == 0, straight.stderr.read()[-3000:]

    run_dir = tmp_path / "stopped"
    process = train_process(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_line(run_dir / "train.log", "training from step 0", process)
    time.sleep(random.uniform(0.1, 1.0))
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == PREEMPTED_EXIT_CODE, process.stderr.read()[-3000:]
    stderr = process.stderr.read()
    assert "stopped by SIGTERM after step" in stderr and "trainer.resume=auto" in stderr
    [(step, _)] = CheckpointDir(run_dir / "checkpoints").steps()
    assert 0 <= step < 60

    resumed = train_process("trainer.resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.wait(600) == 0, resumed.stderr.read()[-3000:]
    assert_same_weights(final_weights(tmp_path / "straight", 60), final_weights(run_dir, 60))


def test_sigusr1_stops_after_the_step_with_a_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    train_step = Trainer.train_step

    def signalled_in_step_3(self, images, labels):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # a real signal, handled while the step runs
        return train_step(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", signalled_in_step_3)
    with pytest.raises(Preempted, match=r"stopped by SIGUSR1 after step 3 of 8"):
        run(tiny_cfg(*SHORT, "trainer.max_iters=8"), tmp_path, [])
    assert [s for s, _ in CheckpointDir(tmp_path / "checkpoints").steps()] == [3]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone after the run


def test_loader_workers_ended_by_the_stop_signal_still_give_a_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    """scancel sends SIGTERM to every process of the job: the loader workers die of it while the main
    process waits for the next batch, and the loader raises; that error means "stop" too."""
    batches = Trainer.batches

    def workers_killed_before_step_3(self):
        for number, batch in enumerate(batches(self)):
            if number == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # recorded: the loop is armed
                raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
            yield batch

    monkeypatch.setattr(Trainer, "batches", workers_killed_before_step_3)
    with pytest.raises(Preempted, match=r"stopped by SIGTERM after step 2 of 8"):
        run(tiny_cfg(*SHORT, "trainer.max_iters=8"), tmp_path, [])
    assert [s for s, _ in CheckpointDir(tmp_path / "checkpoints").steps()] == [2]

    def workers_dead_without_a_signal(self):
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
        yield

    monkeypatch.setattr(Trainer, "batches", workers_dead_without_a_signal)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):  # not a stop: the error as it is
        run(tiny_cfg(*SHORT, "trainer.max_iters=8", "trainer.resume=auto"), tmp_path / "other", [])


# --------------------------------------------------------------------- 2. a worker killed outright
def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def rank_of(pid: int) -> int | None:
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in environ if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


DDP = [*TINY, "data.dataset.num_samples={train:8,val:4}", "data.batch_size=4", *SHORT, "trainer.max_iters=30",
       "trainer.ckpt_every=3"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_torchrun_restarts_a_killed_worker_and_the_run_ends_with_the_same_weights(tmp_path):
    straight = train_process(*DDP, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path, launcher=TORCHRUN)
    assert straight.wait(600) == 0, straight.stderr.read()[-3000:]

    run_dir = tmp_path / "killed"
    process = train_process(*DDP, "trainer.resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                            launcher=[*TORCHRUN[:3], "--max-restarts", "1", *TORCHRUN[3:]],
                            env={**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})  # README
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "step_0000006.pt").is_file():
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)
    workers = {rank_of(pid): pid for pid in children(process.pid)}
    os.kill(workers[1], signal.SIGKILL)
    assert process.wait(600) == 0, process.stderr.read()[-3000:]
    log = (run_dir / "train.log").read_text()  # both attempts: the restarted group continued from a checkpoint
    assert "resumed from" in log and "at step 0" not in log
    assert_same_weights(final_weights(tmp_path / "straight", 30), final_weights(run_dir, 30))


# ------------------------------------------------------------------------- 3. torn checkpoints
def save_steps(folder: Path, steps, keep_last=10) -> CheckpointDir:
    checkpoints = CheckpointDir(folder, keep_last)
    for step in steps:
        checkpoints.save({"model": {"w": torch.full((4000,), float(step))}, "step": step}, step)
    return checkpoints


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "text"])
def test_resume_auto_skips_a_damaged_newest_checkpoint_naming_it(tmp_path, damage, caplog):
    checkpoints = save_steps(tmp_path, [1, 2, 3])
    newest = checkpoints.path(3)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF  # inside a tensor: torch.load alone would not notice
        newest.write_bytes(data)
    else:
        newest.write_text("not a checkpoint")
    with caplog.at_level("WARNING"):
        path = resume_checkpoint("auto", tmp_path)
    assert path == checkpoints.path(2) and load_checkpoint(path)["step"] == 2
    assert str(newest) in caplog.text


def test_resume_auto_refuses_a_folder_whose_checkpoints_all_fail_to_load(tmp_path, tiny_cfg):
    """Starting afresh there would train from random weights with no word of it (the model was built
    for a resume, without its ImageNet weights): a one-line error instead, in the trainer too."""
    checkpoints = save_steps(tmp_path / "checkpoints", [1, 2])
    for _, path in checkpoints.steps():
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"trainer.resume=auto: none of the 2 checkpoints in .* loads"):
        resume_checkpoint("auto", tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="none of the 2 checkpoints"):
        run(tiny_cfg(*SHORT, "trainer.max_iters=2", "trainer.resume=auto"), tmp_path, [])


def test_keep_last_deletes_old_checkpoints_only_after_the_new_one_reads_back(tmp_path, monkeypatch):
    checkpoints = save_steps(tmp_path, [1, 2, 3], keep_last=1)
    assert [s for s, _ in checkpoints.steps()] == [3]
    monkeypatch.setattr("segrepro.engine.checkpoint.is_complete", lambda path: False)  # as if torn on disk
    checkpoints.save({"step": 4}, 4)
    assert [s for s, _ in checkpoints.steps()] == [3, 4]


def test_best_and_metrics_are_never_seen_half_written(tiny_cfg, tmp_path, monkeypatch):
    run(tiny_cfg(*SHORT, "trainer.max_iters=2"), tmp_path, [])
    before = (tmp_path / "checkpoints" / "best.pt").read_bytes(), (tmp_path / "metrics.json").read_text()

    def fail_midway(obj, file, *args, **kwargs):
        file.write(b"half" if "b" in file.mode else "half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(CheckpointWriteError):
        CheckpointDir(tmp_path / "checkpoints").save_best({"x": 1})
    monkeypatch.setattr("json.dump", fail_midway)
    with pytest.raises(OSError):
        write_json({"step": 3}, tmp_path / "metrics.json")
    assert (tmp_path / "checkpoints" / "best.pt").read_bytes() == before[0]
    assert (tmp_path / "metrics.json").read_text() == before[1]
    assert not list(tmp_path.rglob("*.tmp*"))  # no temp files


# ------------------------------------------------------------------------------ 4. a full disk
@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MiB tmpfs (as root), or else a read-only folder: a place where checkpoints cannot be written."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        yield folder, mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)  # busy if a failed write left a file open
        else:
            folder.chmod(0o755)


def test_a_full_disk_stops_naming_the_folder_and_free_space_previous_checkpoint_intact(small_filesystem):
    folder, mounted = small_filesystem
    if mounted:
        checkpoints = save_steps(folder, [1], keep_last=1)  # 1.0 MB of 3: the next one does not fit beside it
        big = {"model": {"w": torch.zeros(2 * 2**20 // 4 * 2)}, "step": 2}
    else:
        checkpoints = save_steps(folder, [1], keep_last=1)
        folder.chmod(0o555)
        big = {"model": {"w": torch.zeros(10)}, "step": 2}
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write into read-only folders and cannot mount a small file system")
    with pytest.raises(CheckpointWriteError) as error:
        checkpoints.save(big, 2)
    message = str(error.value)
    assert str(folder) in message and "MiB free there" in message and str(checkpoints.path(1)) in message
    assert load_checkpoint(checkpoints.path(1))["step"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000001.pt"]  # no temp file left


# ----------------------------------------------------------------------- 5. one folder, one writer
HOLD = "import sys, time; from segrepro.engine.run_lock import RunLock; lock = RunLock(sys.argv[1]).__enter__(); " \
       "print('held', flush=True); time.sleep(600)"


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_blocks_nothing(tiny_cfg, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"{tmp_path} is in use by another segrepro train "
                                                rf"\(pid {holder.pid} on "):
            run(tiny_cfg(*SHORT, "trainer.max_iters=1"), tmp_path, [])
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the dead process's lock is gone with it
        pass


# ---------------------------------------------------------------------------- 6. bad data mid-run
@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_training_image_stops_the_run_naming_the_file(tiny_cfg, tmp_path, workers):
    root = make_voc_tree(tmp_path / "voc")
    (root / "SegmentationClassAug").symlink_to(root / "SegmentationClass")
    bad = root / "JPEGImages" / f"{VOC_TRAIN[1]}.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = tiny_cfg("data=voc_train", f"data.root={root}", "data.val_split=train", f"data.num_workers={workers}",
                   *SHORT, "trainer.max_iters=6", "trainer.ckpt_every=1")
    with pytest.raises(TrainingStopped) as error:
        run(cfg, tmp_path / "run", [])
    message = str(error.value)
    assert str(bad) in message and "training stopped before step" in message
    assert "Traceback" not in message and "last checkpoint, left intact" in message
    kept = CheckpointDir(tmp_path / "run" / "checkpoints").latest()
    assert kept is None or load_checkpoint(kept)["step"] >= 1


# ------------------------------------------------------------------------------ 7. untrusted files
class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_every_loading_path_refuses_pickled_code(tiny_cfg, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": Payload(marker)}, "config": {}, "step": 0}, evil)
    model = build_model(tiny_cfg().model, 6)
    attempts = [
        lambda: load_checkpoint(evil),                                       # resume, segrepro eval
        lambda: load_torch_file(evil, "model weights file"),
        lambda: load_weights(model, evil),                                   # trainer.init_from
        lambda: build_model({**tiny_cfg().model, "weights": str(evil)}, 6),  # model.weights
        lambda: run(tiny_cfg(*SHORT, f"trainer.resume={evil}"), tmp_path / "r", []),
        lambda: run(tiny_cfg(*SHORT, f"trainer.init_from={evil}"), tmp_path / "i", []),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="could run code from the file"):
            attempt()
    assert not marker.exists()


# --------------------------------------------------------------------------- 8. config typos with +
def test_adding_an_unknown_key_to_a_schema_section_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.max_itrs'.*valid keys: .*max_iters"):
        check_overrides(["+trainer.max_itrs=5"])
    check_overrides(["+data.dataset.extra=1"])  # a free-form node takes new keys
