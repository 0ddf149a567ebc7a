"""A resumed run is the run that was started: the run folder's config.yaml wins over the defaults,
changed command-line values are refused unless allowed, config.yaml is never replaced."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from segrepro.config import ConfigError, compose_config
from segrepro.engine.checkpoint import load_checkpoint
from segrepro.engine.run_config import config_changes, resumed_config, typed_keys, write_run_config
from segrepro.train import run, stage_configs, steps_done

from .conftest import TINY, crash_in_step

COMMON = ("trainer.max_iters=6", "trainer.ckpt_every=3", "trainer.eval_every=0", "trainer.keep_last=5",
          "trainer.progress=false")


def test_typed_keys_are_the_changed_leaves_and_every_named_key():
    cfg = compose_config(["trainer.max_iters=600", "data.crop_size=65", "loss=ssl"])
    keys = typed_keys(cfg, ["trainer.max_iters=600", "data.crop_size=65", "loss=ssl"])
    assert {"trainer.max_iters", "data.crop_size", "loss._target_", "loss.region_size"} <= keys
    assert "optim.lr" not in keys
    assert "trainer.max_iters" not in typed_keys(cfg, [])  # 600 is the default: only named, it counts


def test_config_changes_list_old_and_new_and_skip_run_control_keys():
    old = {"trainer": {"max_iters": 8, "resume": None}, "data": {"crop_size": 65}}
    new = {"trainer": {"max_iters": 8, "resume": "auto"}, "data": {"crop_size": 129}}
    assert config_changes(old, new) == [("data.crop_size", 65, 129)]


def test_fresh_folder_or_no_resume_keeps_the_given_config(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.resume=auto")
    assert resumed_config(cfg, tmp_path, []) is cfg  # nothing saved yet: a fresh start


@pytest.mark.slow
def test_resume_without_overrides_continues_the_saved_run_bitwise(tiny_cfg, tmp_path, monkeypatch):
    run(tiny_cfg(*COMMON), tmp_path / "straight", [])
    crash_in_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*COMMON), tmp_path / "resumed", [])
    monkeypatch.undo()
    saved = (tmp_path / "resumed" / "config.yaml").read_text()

    # the README's resume line: the default config plus trainer.resume=auto, no original overrides
    typed = ["trainer.resume=auto"]
    run(compose_config(typed), tmp_path / "resumed", typed)

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000006.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_0000006.pt")
    assert b["config"]["data"]["crop_size"] == a["config"]["data"]["crop_size"] == 33
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (tmp_path / "resumed" / "config.yaml").read_text() == saved


def test_resume_with_a_changed_value_is_refused_naming_it(tiny_cfg, tmp_path):
    write_run_config(tiny_cfg(), tmp_path)
    saved = (tmp_path / "config.yaml").read_text()
    typed = TINY + ["trainer.resume=auto", "data.crop_size=65"]
    with pytest.raises(ConfigError) as error:
        resumed_config(compose_config(typed), tmp_path, typed)
    message = str(error.value)
    assert "data.crop_size: 33 -> 65" in message and str(tmp_path / "config.yaml") in message
    assert "trainer.allow_config_change=true" in message and "trainer.resume" not in message
    assert (tmp_path / "config.yaml").read_text() == saved


@pytest.mark.slow
def test_an_allowed_change_is_applied_and_recorded_beside_config_yaml(tiny_cfg, tmp_path, monkeypatch):
    crash_in_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*COMMON), tmp_path, [])
    monkeypatch.undo()
    saved = (tmp_path / "config.yaml").read_text()
    typed = ["trainer.resume=auto", "trainer.max_iters=7", "trainer.allow_config_change=true"]
    run(compose_config(typed), tmp_path, typed)
    assert load_checkpoint(tmp_path / "checkpoints" / "step_0000007.pt")["config"]["data"]["crop_size"] == 33
    assert (tmp_path / "config.yaml").read_text() == saved
    changed = OmegaConf.load(tmp_path / "config-step0000003.yaml")
    assert changed.trainer.max_iters == 7 and changed.data.crop_size == 33
    # a plain resume afterwards continues the changed run (7 steps: complete), not config.yaml's 6
    assert resumed_config(compose_config(["trainer.resume=auto"]), tmp_path, []).trainer.max_iters == 7
    assert run(compose_config(["trainer.resume=auto"]), tmp_path, ["trainer.resume=auto"])["step"] == 7


def test_optimizer_settings_cannot_change_on_a_resume_even_when_allowed(tiny_cfg, tmp_path):
    """The optimizer's and scheduler's state in the checkpoint would silently keep the old lr."""
    write_run_config(tiny_cfg(), tmp_path)
    typed = TINY + ["trainer.resume=auto", "optim.lr=0.05", "trainer.allow_config_change=true"]
    with pytest.raises(ConfigError, match=r"optim.\* cannot change on a resume[\s\S]*optim.lr: 0.01 -> 0.05"):
        resumed_config(compose_config(typed), tmp_path, typed)


def test_a_fresh_start_over_another_runs_config_is_refused(tiny_cfg, tmp_path):
    write_run_config(tiny_cfg(), tmp_path)
    with pytest.raises(ConfigError, match=r"data\.crop_size: 33 -> 65[\s\S]*trainer\.resume=auto"):
        write_run_config(tiny_cfg("data.crop_size=65"), tmp_path)
    write_run_config(tiny_cfg(), tmp_path)  # the same config again: nothing to say


@pytest.mark.slow
def test_cli_resume_line_of_the_readme_continues_the_run(tmp_path):
    run_dir = tmp_path / "mine"

    def train(*args):
        return subprocess.run([sys.executable, "-m", "segrepro.cli", "train", *args, f"hydra.run.dir={run_dir}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    out = train(*TINY, "trainer.max_iters=2", "trainer.progress=false")
    assert out.returncode == 0, out.stderr[-3000:]
    out = train("trainer.resume=auto")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training already complete at step 2" in (run_dir / "train.log").read_text()
    out = train("trainer.resume=auto", "data.crop_size=65")
    assert out.returncode == 1 and "data.crop_size: 33 -> 65" in out.stderr and "Traceback" not in out.stderr


def test_resuming_a_recipe_composes_its_later_stages_with_the_starting_commands_overrides(tmp_path):
    """The SSL recipe's stage 2 sets its own max_iters and lr; the starting command's values, applied
    again on top of each stage, must be too on a resume typed with trainer.resume=auto alone (without
    overrides.yaml, stage 2 would come back at 20,000 steps and lr 0.0005 and its saved config refuse it)."""
    typed = ["experiment=ssl/voc_deeplabv3", *TINY, "model.encoder=resnet18", "model.pretrained=false",
             "model.multi_grid=null", "model.decoder_channels=16", "data=synthetic", "trainer.max_iters=2",
             "optim.lr=0.001", "trainer.eval_every=0"]
    run(compose_config(typed), tmp_path, typed)
    stage2 = tmp_path / "stage2-finetune"
    assert OmegaConf.load(stage2 / "config.yaml").optim.lr == 0.001
    resume = ["trainer.resume=auto"]
    final = run(compose_config(resume), tmp_path, resume)  # finished: trains nothing, refuses nothing
    assert final["step"] == 2 and sorted(p.name for p in (stage2 / "checkpoints").iterdir()) == [
        "best.pt", "step_0000002.pt"]


def test_a_recipes_steps_done_name_its_top_level_config_changes(tmp_path):
    """A change allowed on a resume of a recipe is recorded as config-step<N>.yaml with N the steps
    trained over its stages, so a second change later gets a file of its own."""
    typed = ["experiment=ssl/voc_deeplabv3", *TINY]
    cfg = compose_config(typed)
    (first, _), (second, _) = stage_configs(cfg, typed)
    assert steps_done(cfg, tmp_path, typed) == 0
    for folder, steps in ((first, (10, 20)), (second, (5,))):
        (tmp_path / folder / "checkpoints").mkdir(parents=True)
        for step in steps:
            (tmp_path / folder / "checkpoints" / f"step_{step:07d}.pt").write_bytes(b"")
    assert steps_done(cfg, tmp_path, typed) == 25
