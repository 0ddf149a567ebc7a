"""The README's commands run as written: every `segrepro train` / `eval` / `predict` / torchrun line
composes, and the ones that need no dataset or GPU run from another folder."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from segrepro.config import check_overrides

from .conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
COMMANDS = [line.split("  #")[0].strip() for block in BLOCKS for line in block.splitlines()
            if re.match(r"\s*(segrepro (train|eval|predict)|torchrun .*-m segrepro\.(train|evaluate))\b", line)]


def overrides_of(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    config = "eval" if "eval" in words[:2] or "segrepro.evaluate" in words else "train"
    config = "predict" if "predict" in words[:2] else config
    return config, [w for w in words if "=" in w and not w.startswith("-")]


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 10 and any("trainer.resume=auto" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_composes(command):
    config, overrides = overrides_of(command)
    check_overrides(overrides, config)


@pytest.mark.slow
def test_the_tiny_readme_run_works_from_another_folder(tmp_path):
    command = next(c for c in COMMANDS if c.startswith("segrepro train debug=tiny"))
    _, overrides = overrides_of(command)
    out = subprocess.run([sys.executable, "-m", "segrepro.cli", "train", *overrides, "trainer.progress=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mIoU" in out.stdout and (tmp_path / "runs").is_dir()
