"""What the command-line entry points share: the override check before Hydra, clean errors, help."""
from __future__ import annotations

import os
import sys

from .config import ConfigError, check_overrides
from .engine.preemption import Preempted
from .engine.run_lock import RunFolderBusy
from .engine.checkpoint import CheckpointWriteError
from .engine.trainer import TrainingStopped

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, TrainingStopped, RunFolderBusy,
               CheckpointWriteError)

HELP_FLAGS = {"--help", "-h"}
MULTIRUN_FLAGS = {"-m", "--multirun"}
# Hydra answers these itself (or reads configs from elsewhere): no check before it
UNCHECKED_FLAGS = {"--hydra-help", "--info", "-i", "-sc", "--shell-completion",
                   "-cd", "--config-dir", "-cn", "--config-name", "-cp", "--config-path"}

_HEADERS = {
    "train": """\
segrepro train [group=choice ...] [key=value ...] [flags]: train a model (every stage of a
recipe), evaluate it, print the IoU table; the run folder holds config.yaml, checkpoints/,
tb/ (TensorBoard) and metrics.json.

  segrepro train model=deeplabv3_r101 loss=ssl loss.region_size=7 data=voc_trainaug
  segrepro train experiment=ssl/voc_deeplabv3           a paper recipe
  segrepro train debug=tiny trainer.max_iters=2          a run of a few seconds on the CPU
  segrepro train -m loss=ce,ssl,lad debug=tiny           a sweep: one job each, runs/multirun/<time>/<n>/
  segrepro train 'hydra.searchpath=[file:///abs/my_configs]' loss=mine   groups from your own folder
""",
    "eval": """\
segrepro eval checkpoint=PATH [group=choice ...] [key=value ...] [flags]: evaluate a checkpoint
with the config saved in it; what you type wins (data.root=..., crf=dense, eval.flip=true).
Writes eval.json into the run folder.

  segrepro eval checkpoint=runs/.../checkpoints/best.pt crf=dense "crf.steps=[1,2,5]"
  segrepro eval checkpoint=PATH "eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75]" eval.flip=true
""",
    "predict": """\
segrepro predict checkpoint=PATH [group=choice ...] [key=value ...] [flags]: write the checkpoint's
prediction of every image of data.val_split as a palette PNG (class index = palette index, at the
image's size), with the model, config and input normalization saved in it and the dataset you
type; eval.scales, eval.flip and crf=... work as in segrepro eval. data=voc_test writes the VOC
evaluation server's layout, results/VOC2012/Segmentation/comp6_test_cls/<id>.png, and the archive
to upload, results.tar.gz; other datasets write predictions/<image name>.png. Into the run folder.

  segrepro predict checkpoint=runs/.../checkpoints/best.pt data=voc_test data.root=data/voc_test
  segrepro predict checkpoint=PATH data=voc_test data.root=data/voc_test crf=dense
  segrepro predict checkpoint=PATH data=camvid data.root=data/camvid    CamVid val, CamVid's colours
""",
}

_TEMPLATE = """\
${hydra.help.header}
== Config groups ==
Pick one choice of a group with group=choice (a nested one as experiment=ssl/voc_deeplabv3):

$APP_CONFIG_GROUPS

== Config ==
Any key of the composed config is set with key=value (trainer.max_iters=2, optim.lr=0.01).
'segrepro COMMAND --cfg job' prints the config ('--cfg job --package loss': one section);
a misspelt key or choice is an error that lists the valid ones.

== Flags ==
$FLAGS_HELP
${hydra.help.footer}"""

_FOOTER = """\
Hydra's own help: --hydra-help. Hydra: https://hydra.cc
"""


def register_help(command: str) -> str:
    """Store the help page of ``segrepro <command> --help`` as the Hydra config
    ``hydra/help=segrepro_<command>``; returns that override."""
    from hydra.core.config_store import ConfigStore

    name = f"segrepro_{command}"
    ConfigStore.instance().store(group="hydra/help", name=name, node={
        "app_name": f"segrepro {command}", "header": _HEADERS.get(command, ""),
        "footer": _FOOTER, "template": _TEMPLATE})
    return f"hydra/help={name}"


def sweep_overrides(overrides: list[str]) -> list[list[str]]:
    """The override lists to check before a sweep (``-m``): every sweep's first values together,
    then each further value of one sweep with the others' first values; one composition per value,
    not per job. Sweeps that cannot be listed here (``glob(...)``, intervals) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            if not override.is_discrete_sweep() or override.value_type.name == "GLOB_CHOICE_SWEEP":
                continue
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    choices = [c for c in choices if c]
    base = [c[0] for c in choices]
    lists = [base]
    for i, values in enumerate(choices):
        lists += [base[:i] + [value] + base[i + 1:] for value in values[1:]]
    return lists


def run_hydra(hydra_main, config_name: str, argv: list[str]) -> None:
    """Check the ``key=value`` overrides (a bad key is named with the valid ones; with ``-m`` every
    value of each sweep), then hand over to Hydra, which parses ``sys.argv`` itself (``--cfg job``,
    ``-m``, ``--help``, ``-sc`` work as usual). ``--help`` shows segrepro's help page."""
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    if flags & HELP_FLAGS:
        sys.argv.append(register_help(config_name))
    elif not flags & UNCHECKED_FLAGS:
        overrides = [a for a in argv if "=" in a and not a.startswith("-")]
        try:
            for checked in (sweep_overrides(overrides) if flags & MULTIRUN_FLAGS else [overrides]):
                check_overrides(checked, config_name)
        except ConfigError as exc:
            print(f"segrepro: config error: {exc}", file=sys.stderr)
            sys.exit(2)
        except Exception:  # an override Hydra's parser rejects: Hydra says so itself
            pass
    hydra_main()


def guarded(fn, *args):
    """Run ``fn``; a user-facing error ends the run with its message, not a traceback
    (``SEGREPRO_TRACEBACK=1`` shows the traceback)."""
    try:
        return fn(*args)
    except Preempted as exc:  # a checkpoint was written: a distinct exit code for requeueing
        print(f"segrepro: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        if os.environ.get("SEGREPRO_TRACEBACK"):
            raise
        print(f"segrepro: error: {exc}", file=sys.stderr)
        sys.exit(1)
