"""The runs a table needs: one ``segrepro train`` per training row and seed, one ``segrepro eval`` per
group of evaluation rows (equal overrides) and seed, each in its own folder
``<root>/<table>/<scale>/<row>/seed<k>/`` (an evaluation's folder is named by its rows joined with
``+``; a row with ``runs_of`` uses the other table's folder).

A training run's command is the recipe, the row's overrides, then the scale's (the scale's come
last: where both set a key, the scale's value is the one used), then the seed, ``trainer.resume=auto``
and the folder; so the same command starts, resumes and, once finished, would only re-report the
run. It has finished when the last stage's ``metrics.json`` is at that stage's ``max_iters`` (the
trainer also writes it at the periodic evaluations). An evaluation has finished when its
``eval.json`` exists and is newer than the checkpoint it read (a training run again since leaves it
out of date). A folder whose saved config differs from the one the table composes holds a run of
another config (:meth:`Run.config_changes`): the table refuses it rather than report or continue it.
"""
from __future__ import annotations

import functools
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import check_overrides, compose_config, saved_run_config
from ..engine.checkpoint import CheckpointDir
from ..engine.run_config import config_changes, newest_config
from ..train import stage_configs
from .spec import Row, Scale, Table


@dataclass(frozen=True, eq=False)
class Run:
    """One subprocess: ``kind`` is the segrepro command (``train`` or ``eval``); ``rows`` are the
    table's rows it gives a number to; ``needs`` is the training run whose checkpoint an evaluation reads."""

    kind: str
    rows: tuple[str, ...]
    seed: int
    folder: Path
    overrides: tuple[str, ...]
    result_file: Path
    final_step: Optional[int] = None  # training: the last stage's max_iters
    checkpoint: Optional[Path] = None  # training: the final checkpoint it writes; evaluation: the one it reads
    config: object = None  # training: the composed config (a recipe's stages in its ``stages``)
    stages: tuple = ()  # training: the composed config of each stage (the datasets it reads)
    stage_folders: tuple[Path, ...] = ()  # training: each stage's folder, in order (its tb/, checkpoints/)
    needs: Optional["Run"] = None

    @property
    def command(self) -> str:
        """The shell command, as a user would type it."""
        return shlex.join(["segrepro", self.kind, *self.overrides])

    def describe(self) -> str:
        return f"{'+'.join(self.rows)} seed {self.seed} ({self.kind})"

    def read(self) -> Optional[dict]:
        """The finished run's metrics (``final`` of the last stage's metrics.json, or eval.json), with
        ``class_names``; None while it has not finished."""
        if not self.result_file.is_file():
            return None
        data = json.loads(self.result_file.read_text())
        if self.kind == "eval":
            checkpoint = self.checkpoint.stat().st_mtime if self.checkpoint.is_file() else 0
            return data if self.result_file.stat().st_mtime >= checkpoint else None
        if data.get("step") != self.final_step or "final" not in data:
            return None
        return {**data["final"], "class_names": data.get("class_names")}

    def finished(self) -> bool:
        return self.read() is not None

    def config_changes(self) -> list[tuple[str, object, object]]:
        """``[(key, saved value, the table's value)]`` where the config saved in the training run's folder
        (``config.yaml``, or its latest ``config-step<N>.yaml``) differs from :attr:`config` (an experiment
        file, recipe or default edited since the run started; ``data.root``, where the data lies, is not
        compared); ``[]`` for an evaluation, a folder with nothing saved yet, or an equal config."""
        path = newest_config(self.folder) if self.kind == "train" else None
        if path is None:
            return []
        try:
            saved = saved_run_config(OmegaConf.to_container(OmegaConf.load(path)))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as error:  # a key since removed, a broken file
            return [(path.name, f"unreadable: {' '.join(str(error).split())[:200]}", "this table's config")]
        return [change for change in config_changes(saved, self.config) if change[0] != "data.root"]


@functools.lru_cache(maxsize=None)
def _layout(overrides: tuple[str, ...]) -> tuple:
    """``(config, stage configs, stage sub-folders, the last stage's max_iters)`` of a training command's
    overrides (a :class:`ConfigError` naming a bad one)."""
    check_overrides(list(overrides))
    cfg = compose_config(list(overrides))
    stages = stage_configs(cfg, list(overrides))
    return (cfg, tuple(stage for _, stage in stages), tuple(folder for folder, _ in stages),
            int(stages[-1][1].trainer.max_iters))


def training_run(row: Row, scale: Scale, seed: int, root: Path, rows: tuple[str, ...]) -> Run:
    table, row_id = row.home
    folder = Path(root) / table / scale.name / row_id / f"seed{seed}"
    overrides = (f"experiment={row.recipe}", *row.overrides, *scale.overrides)
    config, stages, stage_folders, final_step = _layout(overrides)  # composed once for every seed
    last = folder / stage_folders[-1]
    return Run(kind="train", rows=rows, seed=seed, folder=folder,
               overrides=(*overrides, f"trainer.seed={seed}", "trainer.resume=auto", f"hydra.run.dir={folder}"),
               result_file=last / "metrics.json", final_step=final_step,
               checkpoint=CheckpointDir(last / "checkpoints").path(final_step), config=with_seed(config, seed),
               stages=tuple(with_seed(stage, seed) for stage in stages),
               stage_folders=tuple(folder / sub for sub in stage_folders))


def with_seed(cfg, seed: int):
    """A copy of ``cfg`` with ``trainer.seed=seed``, as the command's ``trainer.seed`` sets it in the
    config and, applied again on top of each stage, in every stage."""
    cfg = cfg.copy()
    cfg.trainer.seed = seed
    return cfg


def evaluation_run(rows: Sequence[Row], trained: Run, root: Path, table: Table, scale: Scale) -> Run:
    ids = tuple(row.id for row in rows)
    folder = Path(root) / table.name / scale.name / "+".join(ids) / f"seed{trained.seed}"
    return Run(kind="eval", rows=ids, seed=trained.seed, folder=folder,
               overrides=(f"checkpoint={trained.checkpoint}", *rows[0].overrides, f"hydra.run.dir={folder}"),
               result_file=folder / "eval.json", checkpoint=trained.checkpoint, needs=trained)


def plan(table: Table, scale: Scale, seeds: Sequence[int], root: Path,
         row_ids: Optional[Sequence[str]] = None) -> list[Run]:
    """The runs of ``row_ids`` (all rows by default; an evaluation row brings the row it evaluates),
    seed by seed, each evaluation after the training it reads."""
    chosen = [table.row(r) for r in row_ids] if row_ids else list(table.rows)
    wanted = {row.id for row in chosen} | {row.evaluates for row in chosen if not row.trains}
    training = [row for row in table.rows if row.trains and row.id in wanted]
    chosen_groups = {(row.evaluates, row.overrides) for row in chosen if not row.trains}
    groups: dict[tuple, list[Row]] = {}
    for row in table.rows:  # every evaluation row of a chosen group: one pass gives them all
        if (row.evaluates, row.overrides) in chosen_groups:
            groups.setdefault((row.evaluates, row.overrides), []).append(row)
    runs = []
    for seed in seeds:
        by_home: dict[tuple, Run] = {}
        for row in training:
            if row.home not in by_home:
                rows = tuple(r.id for r in training if r.home == row.home)
                by_home[row.home] = training_run(row, scale, seed, root, rows)
        runs += by_home.values()
        for (evaluated, _), rows in groups.items():
            runs.append(evaluation_run(rows, by_home[table.row(evaluated).home], root, table, scale))
    return runs
