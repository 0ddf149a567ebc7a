import pytest
import torch

from segrepro.config import OptimConfig
from segrepro.engine.checkpoint import CheckpointDir, atomic_save, load_checkpoint
from segrepro.engine.schedule import poly_factor, poly_lr_scheduler


def test_poly_with_slow_start():
    cfg = OptimConfig(lr=0.007, power=0.9, warmup_iters=2, warmup_lr=0.001)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = poly_lr_scheduler(opt, cfg, max_iters=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[1] == pytest.approx(0.001)
    assert lrs[2] == pytest.approx(0.007 * (1 - 2 / 10) ** 0.9)
    assert lrs[9] == pytest.approx(0.007 * (1 - 9 / 10) ** 0.9)
    assert poly_factor(10, 0.007, 10, 0.9) == 0.0


def test_checkpoints_keep_last_n_and_best(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        ckpts.save({"step": step}, step)
    assert [s for s, _ in ckpts.steps()] == [2, 3]
    assert ckpts.latest().name == "step_0000003.pt"
    ckpts.save_best({"step": 2})
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


class Evil:
    """An arbitrary class: unpickling it would run code a checkpoint must not carry."""


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"step": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"bad": Unsaveable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
