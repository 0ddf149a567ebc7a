"""The command line as a Hydra application: the command list, each command's help with its config
groups, multirun sweeps, shell completion, ``python -m segrepro``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segrepro import cli
from segrepro.config import CONFIG_DIR
from segrepro.entry import sweep_overrides

SEGREPRO = [sys.executable, "-m", "segrepro"]
SCRIPT = Path(sys.executable).parent / "segrepro"  # the console script of this venv


def segrepro(*args, cwd, env=None, timeout=600, command=SEGREPRO):
    return subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in Path(CONFIG_DIR, group).glob("*.yaml"))


def test_help_lists_the_commands(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["segrepro", "--help"])
    cli.main()
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"  {command} " in out
    assert "segrepro COMMAND --help" in out and "-sc install=bash" in out


def test_no_or_unknown_command_is_a_usage_error(capsys, monkeypatch):
    for argv in (["segrepro"], ["segrepro", "trian"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 2
        assert "train" in capsys.readouterr().err


def test_a_sweep_is_checked_one_value_at_a_time():
    lists = sweep_overrides(["loss=ce,ssl", "debug=tiny", "trainer.max_iters=2,3", "+x=1"])
    assert lists == [
        ["loss=ce", "debug=tiny", "trainer.max_iters=2", "+x=1"],
        ["loss=ssl", "debug=tiny", "trainer.max_iters=2", "+x=1"],
        ["loss=ce", "debug=tiny", "trainer.max_iters=3", "+x=1"],
    ]
    assert sweep_overrides(["loss=glob(s*)", "debug=tiny"]) == [["debug=tiny"]]  # glob: Hydra's to list


@pytest.mark.slow
def test_command_help_shows_the_config_groups_and_their_choices(tmp_path):
    out = segrepro("train", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "segrepro train" in out.stdout.splitlines()[0]
    for group in ("loss", "model", "data", "crf"):
        assert f"{group}: {', '.join(choices(group))}" in out.stdout
    assert "experiment/ssl: " in out.stdout and "--multirun,-m" in out.stdout
    out = segrepro("eval", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "checkpoint=PATH" in out.stdout and f"crf: {', '.join(choices('crf'))}" in out.stdout


@pytest.mark.slow
def test_multirun_runs_each_job_into_the_sweep_folder_with_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    out = segrepro("train", "-m", "loss=ce,ssl", "debug=tiny", "trainer.max_iters=2", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (sweep / "multirun.yaml").is_file()
    for job, target in (("0", "CrossEntropyLoss"), ("1", "SSLLoss")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["step"] == 2 and 0.0 <= metrics["final"]["miou"] <= 1.0
        assert f"segrepro.losses.{target}" in (sweep / job / "config.yaml").read_text()
        assert f"run folder: {sweep / job}" in out.stdout
    assert out.stdout.count("mIoU") == 2  # one report per job


@pytest.mark.slow
def test_a_misspelt_sweep_value_stops_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    out = segrepro("train", "-m", "loss=ce,sssl", "debug=tiny", "trainer.max_iters=2", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert out.returncode == 2
    assert "sssl" in out.stderr and "ssl" in out.stderr
    assert not sweep.exists()


@pytest.mark.slow
def test_shell_completion_completes_commands_groups_and_choices(tmp_path):
    """Hydra's completion through the command word: the query answers for ``segrepro train ...``,
    and the bash function that ``segrepro -sc install=bash`` defines fills COMPREPLY."""
    def query(line, shell="bash"):
        out = segrepro("-sc", f"query={shell}", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert query("segrepro ") == list(cli.COMMANDS)
    assert query("segrepro ev") == ["eval"]
    assert query("segrepro train loss=") == [f"loss={c}" for c in choices("loss")]
    assert "loss=" in query("segrepro train lo")
    assert query("segrepro eval crf=d") == [f"crf={c}" for c in choices("crf") if c.startswith("d")]
    assert query("segrepro train loss=s", shell="fish") == [f"loss={c}" for c in choices("loss") if c.startswith("s")]
    assert query("/opt/train/bin/segrepro train loss=") == [f"loss={c}" for c in choices("loss")]  # a path with "train"

    if not SCRIPT.exists() or shutil.which("bash") is None:
        pytest.skip("the bash part needs bash and the segrepro console script of this venv")
    install = segrepro("-sc", "install=bash", cwd=tmp_path, command=[SCRIPT])
    assert install.returncode == 0, install.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion segrepro" in install.stdout
    script = tmp_path / "completion.bash"
    script.write_text(install.stdout)
    line = "segrepro train loss=ss"
    bash = subprocess.run(
        ["bash", "-c", f'source {script}; COMP_LINE="{line}"; COMP_POINT={len(line)}; COMP_CWORD=2; '
                       'hydra_bash_completion; echo "${COMPREPLY[*]}"'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"})
    assert bash.stdout.split() == [f"loss={c}" for c in choices("loss") if c.startswith("ss")], bash.stderr


@pytest.mark.slow
def test_python_m_segrepro_is_the_console_script(tmp_path):
    out = segrepro("train", "--cfg", "job", "debug=tiny", "loss=ssl", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "crop_size: 33" in out.stdout and "segrepro.losses.SSLLoss" in out.stdout
