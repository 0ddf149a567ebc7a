"""What the command-line entry points share: the override check before Hydra, clean errors."""
from __future__ import annotations

import os
import sys

from .config import ConfigError, check_overrides
from .engine.trainer import NonFiniteLossError

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, NonFiniteLossError)


def run_hydra(hydra_main, config_name: str, argv: list[str]) -> None:
    """Check the ``key=value`` overrides (a bad key is named with the valid ones), then hand over
    to Hydra, which parses ``sys.argv`` itself (``--cfg job``, ``-m``, ``--help`` work as usual)."""
    flags = {a for a in argv if a.startswith("-")}
    if not flags & {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-i"}:
        overrides = [a for a in argv if "=" in a and not a.startswith("-")]
        try:
            check_overrides(overrides, config_name)
        except ConfigError as exc:
            print(f"segrepro: config error: {exc}", file=sys.stderr)
            sys.exit(2)
    hydra_main()


def guarded(fn, *args):
    """Run ``fn``; a user-facing error ends the run with its message, not a traceback
    (``SEGREPRO_TRACEBACK=1`` shows the traceback)."""
    try:
        return fn(*args)
    except USER_ERRORS as exc:
        if os.environ.get("SEGREPRO_TRACEBACK"):
            raise
        print(f"segrepro: error: {exc}", file=sys.stderr)
        sys.exit(1)
