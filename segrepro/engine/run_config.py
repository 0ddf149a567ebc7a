"""A run folder's config is the run's config: what ``config.yaml`` records is what a resume continues.

``segrepro train hydra.run.dir=runs/mine trainer.resume=auto`` continues the run saved in
``runs/mine/config.yaml`` as it was started, without retyping its overrides
(:func:`resumed_config`). A value typed on the command line that differs from the saved one is
refused, naming each key with its old and new value, unless ``trainer.allow_config_change=true``
says the change is meant. ``config.yaml`` is written once and never replaced by a different
config (:func:`write_run_config`); a changed config goes beside it, as ``config-step<N>.yaml``.
A recipe's stages are composed from the top-level config with the command line's overrides applied
again on top of each stage: ``overrides.yaml`` keeps those of the command that started the run, so
a resume composes the stages it has not reached yet as that command would have (:func:`stage_overrides`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, compose_config, saved_run_config
from ..files import atomic_write
from .checkpoint import resume_checkpoint

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"  # the overrides of the command that started a run of several stages
# how to run, not what is run: taken from the command line, never compared
RUN_CONTROL_KEYS = ("trainer.resume", "trainer.allow_config_change", "trainer.progress", "data.num_workers")


def flat(cfg) -> dict:
    """``{"a.b.c": value}`` over the resolved leaves of ``cfg`` (a list is one leaf)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    leaves = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            leaves[prefix[:-1]] = node

    walk(container, "")
    return leaves


def config_changes(old, new, keys=None) -> list[tuple[str, object, object]]:
    """``[(key, old value, new value)]`` where ``new`` differs from ``old`` (over ``keys``, or all
    keys), run-control keys left out."""
    old_leaves, new_leaves = flat(old), flat(new)
    keys = sorted(set(old_leaves) | set(new_leaves)) if keys is None else sorted(keys)
    absent = "<absent>"
    return [(k, old_leaves.get(k, absent), new_leaves.get(k, absent)) for k in keys
            if k not in RUN_CONTROL_KEYS and old_leaves.get(k, absent) != new_leaves.get(k, absent)]


def typed_keys(cfg, overrides: list[str]) -> set[str]:
    """The leaves the command line set: those where ``cfg`` differs from the default config, and
    every ``key=value`` it names (also one that sets a key to its default)."""
    default = flat(compose_config([]))
    leaves = flat(cfg)
    keys = {k for k, v in leaves.items() if default.get(k, "<absent>") != v}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in leaves:
            keys.add(key)
        keys.update(k for k in leaves if k.startswith(key + "."))  # a group choice: its section
    return keys


def saved_config_file(cfg, run_dir) -> Path | None:
    """The config file of the run ``trainer.resume`` continues: ``run_dir/config.yaml`` for
    ``auto``, the checkpoint's run folder's for a path; None if there is none."""
    resume = cfg.trainer.resume
    if resume in (None, "", "none"):
        return None
    folder = Path(run_dir) if resume == "auto" else resume_checkpoint(resume, run_dir).parent.parent
    return newest_config(folder)


def newest_config(folder) -> Path | None:
    """The file of a run folder that describes its config now: the latest ``config-step<N>.yaml`` (a change
    allowed on a resume), else ``config.yaml``; None if neither is there."""
    changed = sorted(Path(folder).glob("config-step*.yaml"))
    if changed:
        return changed[-1]
    path = Path(folder) / CONFIG_FILE
    return path if path.is_file() else None


def format_changes(changes) -> str:
    return "\n".join(f"  {key}: {old!r} -> {new!r}" for key, old, new in changes)


def resumed_config(cfg, run_dir, overrides: list[str]):
    """The config to resume with: the saved one, with the run-control keys of ``cfg``. Values the
    command line changes are a :class:`ConfigError` listing them, unless
    ``trainer.allow_config_change`` (then they are applied and logged). Not resuming, or nothing
    saved yet: ``cfg`` itself."""
    path = saved_config_file(cfg, run_dir)
    if path is None:
        return cfg
    saved = saved_run_config(OmegaConf.to_container(OmegaConf.load(path)))
    changes = config_changes(saved, cfg, typed_keys(cfg, overrides))
    if changes and not cfg.trainer.allow_config_change:
        raise ConfigError(
            f"{path} holds the run being resumed; the command line would change it:\n{format_changes(changes)}\n"
            "Resume without these values to continue the run as it was started, or add "
            "trainer.allow_config_change=true to change them on purpose.")
    optimizer = [change for change in changes if change[0].startswith("optim.")]
    if optimizer:
        raise ConfigError(
            f"{path} holds the run being resumed; optim.* cannot change on a resume, whose optimizer and schedule "
            f"continue from the checkpoint's state:\n{format_changes(optimizer)}\n"
            "Start a new run from its weights instead: trainer.init_from=<its checkpoint> in another folder.")
    for key, _, new in changes:
        log.warning("resuming %s with %s changed to %r (trainer.allow_config_change)", path.parent, key, new)
        OmegaConf.update(saved, key, new, merge=False, force_add=True)
    for key in RUN_CONTROL_KEYS:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    return saved


def write_run_config(cfg, folder, step: int = 0) -> Path:
    """Save ``cfg`` as ``folder/config.yaml``, or, if the folder's config (:func:`newest_config`) is a
    different one and ``trainer.allow_config_change`` is set, as ``folder/config-step<step>.yaml`` beside
    it (a different config without it is a :class:`ConfigError`). Returns the file that describes ``cfg``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, newest = folder / CONFIG_FILE, newest_config(folder)
    if newest is not None:
        changes = config_changes(saved_run_config(OmegaConf.to_container(OmegaConf.load(newest))), cfg)
        if not changes:
            return newest
        if not cfg.trainer.allow_config_change:
            raise ConfigError(
                f"{newest} holds another run's config; this run differs in:\n{format_changes(changes)}\n"
                "Continue that run with trainer.resume=auto, start this one in another folder "
                "(hydra.run.dir=...), or add trainer.allow_config_change=true to go on in this folder.")
        path = folder / f"config-step{step:07d}.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    return path


def stage_overrides(cfg, run_dir, overrides: list[str]) -> list[str]:
    """The overrides that compose a run's stages: on a resume, those of the command that started the run
    (``overrides.yaml`` beside the saved ``config.yaml``) followed by this command's new ones; else this
    command's. (The values come from the run's config; the overrides only say which keys were typed.)"""
    path = saved_config_file(cfg, run_dir)
    if path is None or not (path.parent / OVERRIDES_FILE).is_file():
        return list(overrides)
    started = list(OmegaConf.load(path.parent / OVERRIDES_FILE))
    return started + [o for o in overrides if o not in started]


def write_overrides(folder, overrides: list[str]) -> None:
    """Record the overrides of the command that starts a run of several stages."""
    with atomic_write(Path(folder) / OVERRIDES_FILE, "w", encoding="utf-8") as file:
        file.write(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
