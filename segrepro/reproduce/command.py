"""``segrepro reproduce table=NAME [key=value ...]``: run a paper table's rows and write the table.

Options (``key=value``, as the other commands take them; ``rows=ce,ssl3`` is one value):

  table=NAME        a file of experiments/ without .yaml: lad_table1, ..., ssl_table6, or a figure:
                    ssl_fig3, ssl_fig4 (trains the runs of the row it reads, then draws figure.png,
                    figure.csv, figure.md in <root>/<figure>/<scale>/; rows= does not apply)
  scale=paper       paper (the recipe as the paper ran it), mini (CamVid on a CPU), smoke (synthetic, tiny):
                    experiments/scales/<scale>.yaml says what each changes
  seeds=1           seeds 0 .. N-1 (trainer.seed), one run per row and seed
  rows=a,b          a subset of the rows (default: all); an evaluation row brings the row it evaluates
  dry_run=false     true: print the segrepro train / eval command of every run, run nothing
  root=runs/tables  the runs and the report: <root>/<table>/<scale>/<row>/seed<k>/, the report in
                    <root>/<table>/<scale>/ (table.md, table.csv, table.tex, table.png, runs.json)
  camvid_root=      the CamVid copy of scale=mini (default: $CAMVID_ROOT, else data/camvid)
  experiments=      another folder of table files (default: segrepro's experiments/)
  launcher=local    local: each run a subprocess of this command, one after another; submitit: each run
                    its own submitit job (segrepro/reproduce/submitit_launcher.py), with:
    cluster=        slurm (sbatch), local (processes on this machine, one by one), debug (in this process);
                    default: slurm where srun is found, else local
    wait=           true: wait for the jobs and write the whole table (default, except on slurm); false:
                    submit and return, the same command later collects what has finished
    gpus_per_job=1  GPUs of a run, one task (DDP process) each, spread over nodes=1 nodes
    timeout_min=1440  the time limit of a job; at it (or at a preemption) the job is checkpointed and requeued
    partition=, cpus_per_task=, mem_gb=, slurm_array_parallelism=, slurm_additional={account: x, qos: y}

Repeat the command until the table is complete: finished runs are skipped, an interrupted run
resumes where it stopped. Each run is a subprocess; one that fails does not stop the others.
With launcher=submitit, a run whose job is still pending or running is not submitted again.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError
from . import figures, plan, report, runner, submitit_launcher
from .spec import EXPERIMENTS_DIR, figure_names, load_figure, load_scale, load_table, table_names


@dataclass
class Options:
    table: Optional[str] = None
    scale: str = "paper"
    seeds: int = 1
    rows: Optional[str] = None
    dry_run: bool = False
    root: str = "runs/tables"
    camvid_root: Optional[str] = None
    experiments: Optional[str] = None
    launcher: str = "local"
    # launcher=submitit (submitit_launcher.OPTIONS); None: the cluster's or submitit's default
    cluster: Optional[str] = None
    wait: Optional[bool] = None
    gpus_per_job: int = 1
    nodes: int = 1
    timeout_min: int = 1440
    partition: Optional[str] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    slurm_array_parallelism: Optional[int] = None
    slurm_additional: Optional[dict[str, Any]] = None


def parse(argv: list[str]) -> Options:
    """``key=value`` words onto :class:`Options` (values typed as in YAML); a :class:`ConfigError`
    names a bad word or key and lists the valid ones."""
    valid = [f.name for f in fields(Options)]
    bad = [word for word in argv if "=" not in word or word.split("=", 1)[0] not in valid]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not an option; the options: {', '.join(f'{k}=' for k in valid)}")
    words = [f"{key}={value}" for key, value in (word.split("=", 1) for word in argv)]
    try:
        options = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Options), OmegaConf.from_dotlist(words)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', None) or 'options'}: {str(exc).splitlines()[0]}") from None
    if options.table is None:
        raise ConfigError("table=NAME is needed; the tables: " + ", ".join(table_names(experiments_dir(options)))
                          + "; the figures: " + ", ".join(figure_names(experiments_dir(options))))
    if options.seeds < 1:
        raise ConfigError(f"seeds={options.seeds}: at least 1")
    if options.launcher not in ("local", "submitit"):
        raise ConfigError(f"launcher={options.launcher}: local (one run after another here) or submitit (a job each)")
    submitit_launcher.check_options(options, named={word.split("=", 1)[0] for word in argv})
    return options


def experiments_dir(options: Options) -> Path:
    return Path(options.experiments) if options.experiments else EXPERIMENTS_DIR


def reproduce(options: Options) -> int:
    """Print the commands (``dry_run``) or run the table (or figure) and write its report; the exit code."""
    directory = experiments_dir(options)
    figure = load_figure(options.table, directory) if options.table in figure_names(directory) else None
    table = load_table(figure.row.home[0] if figure else options.table, directory)
    camvid_root = options.camvid_root or os.environ.get("CAMVID_ROOT") or "data/camvid"
    scale = load_scale(options.scale, camvid_root, directory)
    seeds = list(range(options.seeds))
    row_ids = [r for r in options.rows.split(",") if r] if options.rows else None
    root = Path(options.root)
    if figure is not None and row_ids:
        raise ConfigError(f"rows= picks rows of a table; {figure.name} is a figure drawn from "
                          f"{'/'.join(figure.row.home)}'s runs")
    if figure is not None:
        runs = figures.figure_runs(figure, table, scale, seeds, root)
        name, title, source = figure.name, figure.title, f"drawn from {len(runs)} runs of {table.name}/{figure.row.id}"
    else:
        runs = plan.plan(table, scale, seeds, root, row_ids)
        name, title, source = table.name, table.title, f"{len(runs)} runs"
    if options.dry_run:
        print(f"# {name}, scale {scale.name}, {source} ({scale.description})")
        for run in runs:
            print(run.command)
        return 0
    runner.check_configs(runs)
    runner.check_data(runs)
    print(f"{title}: {source} at scale {scale.name} ({scale.description})", flush=True)
    folder = root / name / scale.name
    if figure is not None:
        failed = execute(runs, scale, options, folder)
        if not any(run.finished() for run in runs):  # failed, or jobs still pending (launcher=submitit wait=false)
            raise ConfigError(f"none of the {len(runs)} runs of {table.name}/{figure.row.id} has finished yet; nothing "
                              "drawn. Run the same command again to retry them or collect their jobs")
        path = figures.draw(figure, table, scale, runs, folder)
        print(path.read_text())
        print(f"written: {path} (and figure.png, figure.csv beside it)")
    else:
        try:
            failed = execute(runs, scale, options, folder)
        finally:
            path = report.write_report(table, scale, seeds, plan.plan(table, scale, seeds, root), folder)
            print(path.read_text())
            print(f"written: {path} (and table.csv, table.tex, table.png, runs.json beside it)")
    if failed:
        print(f"segrepro reproduce: {len(failed)} of {len(runs)} runs did not finish: "
              f"{', '.join(run.describe() for run in failed)}; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0


def execute(runs, scale, options: Options, folder: Path) -> list:
    """Run the unfinished ``runs`` with ``options.launcher``; the runs that did not finish."""
    if options.launcher == "submitit":
        return submitit_launcher.execute(runs, scale.name, options, folder)
    return runner.execute(runs, scale.name)


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help", "help"} & set(argv):
        print(__doc__)
        print("tables:", ", ".join(table_names()))
        print("figures:", ", ".join(figure_names()))
        return
    try:
        options = parse(argv)
    except ConfigError as exc:
        print(f"segrepro reproduce: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        code = reproduce(options)
    except (ConfigError, runner.Stopped) as exc:
        print(f"segrepro reproduce: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("segrepro reproduce: interrupted; the same command resumes the table", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
