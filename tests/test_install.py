"""Installing segrepro: the wheel carries the configs and works from any folder, a user's own config
folder joins through Hydra's search path, and the version ranges admit the locked set."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from segrepro.config import CONFIG_DIR
from segrepro.reproduce.spec import EXPERIMENTS_DIR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / "constraints.txt"

# Left out of the copy the wheel is built from: the checkout's venv, runs, datasets, build outputs
TOP_IGNORED = {".venv", ".git", "runs", "outputs", "multirun", "data", "build", ".pytest_cache"}


def ignored(folder, names):
    top = Path(folder) == REPO
    return {n for n in names if top and n in TOP_IGNORED or n == "__pycache__" or n.endswith(".egg-info")}

# A user's own config folder: one loss built from segrepro's cross entropy with its own arguments
USER_LOSS = """\
_target_: segrepro.losses.CrossEntropyLoss
ignore_index: ${data.ignore_index}
"""


def pins() -> dict[str, Version]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonical(name)] = Version(version)
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_package_list_names_every_package_and_maps_the_configs():
    """pyproject.toml lists the packages by hand (configs/ joins them as segrepro.configs): a new
    sub-package must be added there, or the wheel would leave it out."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    found = sorted(".".join(path.relative_to(REPO).parts) for path in (REPO / "segrepro").rglob("*")
                   if path.is_dir() and path.name != "__pycache__" and any(path.glob("*.py")))
    assert sorted(setuptools["packages"]) == sorted(["segrepro", *found, "segrepro.configs", "segrepro.experiments"])
    assert setuptools["package-dir"] == {"segrepro.configs": "configs", "segrepro.experiments": "experiments"}
    assert (Path(CONFIG_DIR) / "train.yaml").is_file() and (EXPERIMENTS_DIR / "ssl_table2.yaml").is_file()


def test_the_constraints_pin_every_dependency_inside_its_range():
    """constraints.txt (what make and CI install) pins each dependency of pyproject.toml and of the
    test extra, and every pin lies in the range pyproject.toml states."""
    pinned = pins()
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]
                    + PYPROJECT["project"]["optional-dependencies"]["test"]]
    for requirement in requirements:
        name = canonical(requirement.name)
        assert name in pinned, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"{requirement.name}=={pinned[name]} (constraints.txt) is outside {requirement} (pyproject.toml)"
    assert "segrepro" not in pinned


def run(cmd, cwd, env=None, timeout=600):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    """The wheel built offline holds the configs; installed into a plain folder (no editable install,
    no checkout beside it) its console script composes, trains 2 iterations with a loss from the
    user's own config folder and evaluates the checkpoint, from an unrelated folder."""
    pytest.importorskip("pip", reason="the wheel is built and installed with pip")
    src, dist, target, elsewhere = (tmp_path / name for name in ("src", "dist", "target", "elsewhere"))
    shutil.copytree(REPO, src, ignore=ignored)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", dist, src], cwd=tmp_path)
    (wheel,) = dist.glob("segrepro-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    configs = {f"segrepro/configs/{p.relative_to(REPO / 'configs').as_posix()}"
               for p in (REPO / "configs").rglob("*.yaml")}
    experiments = {f"segrepro/experiments/{p.relative_to(REPO / 'experiments').as_posix()}"
                   for p in (REPO / "experiments").rglob("*.yaml")}
    assert configs and configs <= names and experiments and experiments <= names
    assert not any(name.startswith(("tests/", "scripts/", "configs/", "docs/", "experiments/")) for name in names)
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", target, wheel], cwd=tmp_path)

    elsewhere.mkdir()
    (elsewhere / "mine" / "loss").mkdir(parents=True)
    (elsewhere / "mine" / "loss" / "my_ce.yaml").write_text(USER_LOSS)
    # the installed copy and the deps of this venv; not the checkout (nor its editable install)
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1"}
    where = run([sys.executable, "-c", "import segrepro, segrepro.config as c; print(segrepro.__file__); print(c.CONFIG_DIR)"],
                cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where
    segrepro = target / "bin" / "segrepro"

    job = run([segrepro, "train", "--cfg", "job", "debug=tiny"], cwd=elsewhere, env=env).stdout
    assert "crop_size: 33" in job and "segrepro.losses.CrossEntropyLoss" in job
    searchpath = f"hydra.searchpath=[file://{elsewhere / 'mine'}]"
    job = run([segrepro, "train", searchpath, "loss=my_ce", "--cfg", "job", "--package", "loss"],
              cwd=elsewhere, env=env).stdout
    assert "_target_: segrepro.losses.CrossEntropyLoss" in job

    run([segrepro, "train", searchpath, "loss=my_ce", "debug=tiny", "trainer.max_iters=2",
         "hydra.run.dir=run"], cwd=elsewhere, env=env)
    assert (elsewhere / "run" / "metrics.json").is_file() and (elsewhere / "run" / "config.yaml").is_file()
    assert (elsewhere / "run" / "checkpoints" / "step_0000002.pt").is_file()
    run([segrepro, "eval", f"checkpoint={elsewhere / 'run' / 'checkpoints' / 'best.pt'}", "hydra.run.dir=ev"],
        cwd=elsewhere, env=env)
    assert (elsewhere / "ev" / "eval.json").is_file()
    assert not (elsewhere / "configs").exists()

    usage = run([sys.executable, "-m", "segrepro", "--help"], cwd=elsewhere, env=env).stdout
    assert "train" in usage and "eval" in usage
    commands = run([segrepro, "reproduce", "table=ssl_table2", "rows=ce", "scale=smoke", "dry_run=true"],
                   cwd=elsewhere, env=env).stdout  # the table files ship in the wheel
    assert "segrepro train experiment=ssl/voc_deeplabv3 loss=ce data=synthetic" in commands


def test_a_user_config_folder_adds_a_loss_through_the_search_path(tmp_path):
    """``hydra.searchpath=[file://DIR]`` adds DIR's groups: a loss of DIR/loss/ composes beside
    segrepro's own (the override check knows it too)."""
    from segrepro.config import check_overrides, compose_config

    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "my_ce.yaml").write_text(USER_LOSS)
    overrides = [f"hydra.searchpath=[file://{tmp_path}]", "loss=my_ce", "debug=tiny"]
    check_overrides(overrides)
    cfg = compose_config(overrides)
    assert cfg.loss._target_ == "segrepro.losses.CrossEntropyLoss" and cfg.data.crop_size == 33
    # segrepro's own choices are still there
    assert compose_config([f"hydra.searchpath=[file://{tmp_path}]", "loss=ssl"]).loss._target_.endswith("SSLLoss")


def test_install_script_hands_uv_the_indexes_pip_is_configured_with(tmp_path, monkeypatch):
    """.ci/install.py gives uv pip's index settings (config files and PIP_* variables)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("install", REPO / ".ci" / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    config = tmp_path / "pip.conf"
    config.write_text(textwrap.dedent("""\
        [global]
        index-url = https://mirror.invalid/simple
        extra-index-url = file:///srv/a/simple file:///srv/b/simple
        """))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", "/srv/wheels")
    flags = install.pip_index_flags(Path(sys.executable))
    pairs = list(zip(flags[::2], flags[1::2]))
    assert ("--index-url", "https://mirror.invalid/simple") in pairs
    assert ("--extra-index-url", "file:///srv/a/simple") in pairs and ("--extra-index-url", "file:///srv/b/simple") in pairs
    assert ("--find-links", "/srv/wheels") in pairs
    assert ("--index-strategy", "unsafe-best-match") in pairs
    assert install.pinned(CONSTRAINTS, "uv").startswith("uv==")
