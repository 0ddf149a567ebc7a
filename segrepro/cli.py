"""The ``segrepro`` console script (also ``python -m segrepro``): ``segrepro COMMAND [hydra overrides]``.

Each command is a Hydra application (``segrepro train --help`` lists its config groups, ``-m``
sweeps, ``--cfg job`` prints the config). Shell completion is Hydra's, with the command word in
front: ``eval "$(segrepro -sc install=bash)"`` completes ``segrepro train loss=<TAB>``.
"""
from __future__ import annotations

import importlib
import os
import sys

# command -> (module whose main() runs it, one line of help)
COMMANDS = {
    "train": ("segrepro.train", "train a model (every stage of a recipe), evaluate it, print the IoU table"),
    "eval": ("segrepro.evaluate", "evaluate a checkpoint with its own config: segrepro eval checkpoint=PATH"),
    "predict": ("segrepro.predict", "write a checkpoint's predictions as palette PNGs, and the VOC test "
                "server's archive: segrepro predict checkpoint=PATH data=voc_test"),
    "reproduce": ("segrepro.reproduce.command", "run a paper table's rows, ours beside the paper's numbers: "
                  "segrepro reproduce table=ssl_table2"),
}
HYDRA_COMMANDS = ("train", "eval", "predict")  # reproduce takes key=value options of its own, not Hydra's

COMPLETION_FLAGS = ("-sc", "--shell-completion")


def usage() -> str:
    from . import __version__

    commands = "\n".join(f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items())
    return f"""usage: segrepro COMMAND [hydra overrides] [hydra flags]

segrepro {__version__}: the LAD and SSL segmentation-loss papers, end to end.

commands:
{commands}

  segrepro COMMAND --help      the command's config groups, their choices and Hydra's flags

examples:
  segrepro train                                   DeepLabV3+ ResNet-18 on the built-in synthetic data
  segrepro train model=deeplabv3_r101 loss=ssl data=voc_trainaug
  segrepro train experiment=ssl/voc_deeplabv3      a paper recipe (both stages)
  segrepro train --cfg job                         print the composed config and stop
  segrepro train -m loss=ce,ssl debug=tiny         a sweep: one job per loss, in runs/multirun/<time>/
  segrepro train 'hydra.searchpath=[file:///abs/my_configs]' loss=mine   your own config folder
  segrepro eval checkpoint=runs/.../checkpoints/best.pt

shell completion (bash, zsh; fish with install=fish):
  eval "$(segrepro -sc install=bash)"
"""


def complete(argv: list[str]) -> None:
    """``segrepro -sc install=SHELL|uninstall=SHELL|query=SHELL``: Hydra's completion for the
    command named on the line being completed (``COMP_LINE``), the command word itself completed
    here. Hydra's query expects ``APP overrides...``, so the command word is taken out of the line."""
    action = argv[1] if len(argv) > 1 else ""
    if not action.startswith("query="):
        # install / uninstall: Hydra prints the script; it registers `segrepro` (the program name)
        _run("train", [COMPLETION_FLAGS[0], *argv[1:]])
        return
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) <= 1 or len(words) == 2 and not line.endswith(" "):  # the command word
        sep = "\n" if action == "query=fish" else " "
        typed = words[1] if len(words) == 2 else ""
        print(sep.join(name for name in COMMANDS if name.startswith(typed)))
        return
    if words[1] not in HYDRA_COMMANDS:
        return
    after_program = line.index(words[0]) + len(words[0])  # the program's path may hold "train" or "eval"
    rest = line[line.index(words[1], after_program) + len(words[1]):]  # keeps a trailing space: "a new word"
    os.environ["COMP_LINE"] = words[0] + rest
    _run(words[1], [COMPLETION_FLAGS[0], *argv[1:]])


def _run(command: str, args: list[str]) -> None:
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [sys.argv[0], *args]
    module.main()


def main() -> None:
    args = sys.argv[1:]
    if not args:
        print(usage(), file=sys.stderr)
        sys.exit(2)
    first = args[0]
    if first in ("-h", "--help", "help"):
        print(usage())
        return
    if first in ("-V", "--version"):
        from . import __version__

        print(f"segrepro {__version__}")
        return
    if first in COMPLETION_FLAGS:
        complete(args)
        return
    if first not in COMMANDS:
        print(f"segrepro: unknown command {first!r}; the commands: {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        sys.exit(2)
    _run(first, args[1:])


if __name__ == "__main__":
    main()
