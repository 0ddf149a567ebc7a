#!/usr/bin/env python3
"""Create the virtual environment and install segrepro with the locked set: what `make install`
(and so `make demo`, `make test` and CI) runs.

    python3 .ci/install.py [--venv .venv] [--constraints constraints.txt] [--installer auto|uv|pip]

The venv is made with ``python -m venv`` when it is missing (so it has pip). ``--installer auto``
(the default) installs with uv: the one on PATH, or else the version pinned in the constraints
file, installed into the venv with pip (a few seconds); uv is handed pip's package-index
settings (index-url, extra-index-url, find-links: pip's config files and PIP_* variables), so
both read the same indexes, and compiles the bytecode as pip does. When uv cannot be had or its install fails, pip installs (the
fallback; ``--installer pip`` asks for it). ``--constraints ''`` installs without the locked set
(against a torch of your own, already in the venv).
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = ".[test]"  # editable


def run(cmd: list[str], **kwargs) -> int:
    print("+ " + shlex.join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=REPO, **kwargs)


def pinned(constraints: Path | None, name: str) -> str:
    """``name==X`` from the constraints file, else ``name``."""
    if constraints and constraints.is_file():
        for line in constraints.read_text().splitlines():
            if re.match(rf"^{re.escape(name)}==", line.strip(), re.IGNORECASE):
                return line.split("#")[0].strip()
    return name


def pip_index_flags(python: Path) -> list[str]:
    """uv's flags for the package indexes pip is configured with (``pip config list``: the
    config files and the PIP_* variables)."""
    out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    flags: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        option = key.rpartition(".")[2]
        if option not in ("index-url", "extra-index-url", "find-links"):
            continue
        for item in value.strip().strip("'\"").split():
            if (f"--{option}", item) not in zip(flags[::2], flags[1::2]):
                flags += [f"--{option}", item]
    if any(f == "--extra-index-url" for f in flags):
        # pip takes the best version from all indexes; uv's default takes the first index that has the package
        flags += ["--index-strategy", "unsafe-best-match"]
    return flags


def find_uv(python: Path, constraints: Path | None) -> str | None:
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    in_venv = python.parent / "uv"
    if not in_venv.exists():
        if run([python, "-m", "pip", "install", "-q", pinned(constraints, "uv")]) != 0:
            return None
    return str(in_venv) if in_venv.exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--constraints", default="constraints.txt", help="'' for none")
    parser.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto")
    args = parser.parse_args()
    venv = (REPO / args.venv).resolve() if not Path(args.venv).is_absolute() else Path(args.venv)
    python = venv / "bin" / "python"
    constraints = (REPO / args.constraints) if args.constraints else None
    if constraints is not None and not constraints.is_file():
        print(f"install: no constraints file {constraints}", file=sys.stderr)
        return 2
    if not python.exists() and run([sys.executable, "-m", "venv", venv]) != 0:
        return 1
    with_constraints = ["-c", constraints] if constraints else []
    if args.installer != "pip":
        uv = find_uv(python, constraints)
        if uv is not None:
            # --compile-bytecode: as pip does; without .pyc files (and with PYTHONDONTWRITEBYTECODE set)
            # every process would compile torch's Python sources again at import
            if run([uv, "pip", "install", "--python", python, "--compile-bytecode", *pip_index_flags(python),
                    *with_constraints, "-e", TARGET]) == 0:
                return 0
            print("install: uv failed; installing with pip", file=sys.stderr)
        elif args.installer == "uv":
            print("install: uv cannot be had", file=sys.stderr)
            return 1
        else:
            print("install: no uv; installing with pip", file=sys.stderr)
    if run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"]) != 0:
        return 1
    return run([python, "-m", "pip", "install", *with_constraints, "-e", TARGET])


if __name__ == "__main__":
    sys.exit(main())
