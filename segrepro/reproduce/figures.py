"""``segrepro reproduce table=ssl_fig3`` (or ``ssl_fig4``): a paper figure drawn from the runs of the
table row its file names (``runs_of``), written to ``<root>/<figure>/<scale>/``: ``figure.png``,
``figure.csv`` and ``figure.md`` (what was plotted, the scale, the runs).

Its runs are those of ``segrepro reproduce table=TABLE rows=ROW`` (the same folders and commands, so
the table and the figure share them): the missing ones are trained first, finished ones skipped,
interrupted ones resumed. The figure is drawn from the runs that have finished:
:mod:`.logged_statistics` (SSL Figure 3) or :mod:`.hard_examples` (SSL Figure 4).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..files import atomic_write
from . import hard_examples, logged_statistics, plan, runner
from .plan import Run
from .report import commits, row_command, run_status
from .spec import Figure, Scale, Table


def figure_runs(figure: Figure, table: Table, scale: Scale, seeds: Sequence[int], root: Path) -> list[Run]:
    """The training runs of the figure's row (``table`` is the one ``runs_of`` names), one per seed."""
    return plan.plan(table, scale, seeds, root, [figure.row.id])


def markdown(figure: Figure, table: Table, scale: Scale, runs: Sequence[Run], lines: Sequence[str]) -> str:
    finished = [run.seed for run in runs if run.finished()]
    text = [f"# {figure.title}", "",
            f"{figure.paper} paper, Figure {figure.number}; region size {figure.region_size}, sigma {figure.sigma}. "
            f"Scale **{scale.name}**: {scale.description}. Seeds: {', '.join(str(run.seed) for run in runs)} "
            f"(drawn from the finished ones: {', '.join(map(str, finished)) or 'none'}).", "", *lines, "",
            "## Runs", "",
            f"The runs of {table.name}/{figure.row.id}, {row_command(figure.row, table)}, shared with "
            f"`segrepro reproduce table={table.name} rows={figure.row.id}`; scale {scale.name}'s overrides after "
            f"them: `{' '.join(scale.overrides) or '(none)'}`.", "",
            "| seed | status | commit | seconds | folder |", "|---|---|---|---:|---|"]
    for run in runs:
        text.append(f"| {run.seed} | {run_status(run)} | {', '.join(commits(run))} | "
                    f"{runner.read_record(run).get('seconds', '')} | {run.folder} |")
    return "\n".join(text) + "\n"


def draw(figure: Figure, table: Table, scale: Scale, runs: Sequence[Run], folder: Path) -> Path:
    """Write the figure's three files from the finished runs of ``runs``; the path of ``figure.md``."""
    finished = [run for run in runs if run.finished()]
    subtitle = f"scale {scale.name}: {scale.description}"
    if figure.draws == "logged_statistics":
        by_seed = {run.seed: logged_statistics.run_scalars(run, figure.scalars) for run in finished}
        e_max = hard_examples.ssl_loss(finished[0].stages[-1], figure).e_max
        logged_statistics.write_csv(by_seed, figure.scalars, folder / "figure.csv")
        logged_statistics.plot(figure, by_seed, e_max, subtitle, folder / "figure.png")
        lines = logged_statistics.summary_lines(figure, by_seed, e_max)
    else:
        by_seed = {}
        for run in finished:
            runner.say(f"{figure.name}: e maps of seed {run.seed}'s final checkpoint over the validation images")
            by_seed[run.seed] = hard_examples.count_hard(run.checkpoint, figure)
        hard_examples.write_csv(figure, by_seed, folder / "figure.csv")
        hard_examples.plot(figure, by_seed, subtitle, folder / "figure.png")
        lines = hard_examples.summary_lines(figure, by_seed)
    with atomic_write(folder / "figure.md", "w", encoding="utf-8") as file:
        file.write(markdown(figure, table, scale, runs, lines))
    return folder / "figure.md"
