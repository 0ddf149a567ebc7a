"""The report of a reproduced table, in ``<root>/<table>/<scale>/``: ``table.md``, ``table.csv``,
``table.tex`` (booktabs), ``table.png``, ``runs.json``, ``qualitative.png`` (segrepro.reproduce.qualitative)
and, where the paper gives per-class values, ``per_class.png``.

Per row: the paper's value; ours as mean +- std over the seeds that have finished, with n; ours
minus the paper; the paired difference against the row's baseline over the seeds both have (mean
and 95 % t-interval) beside the paper's difference; whether the two have the same sign. For the
table: Kendall's tau between the paper's values and ours. A row with no finished run is
"missing", never 0. ``table.md`` ends with the scale, each row's overrides and every run's folder,
status and git commit; ``runs.json`` has every run's exact command.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..files import atomic_write, write_json
from .plan import Run
from .plots import pyplot, save_png
from .qualitative import write_qualitative
from .runner import read_record
from .spec import Row, Scale, Table
from .stats import Interval, Summary, kendall_tau, paired_difference, sign_agrees, summarize


@dataclass(frozen=True)
class RowResult:
    row: Row
    values: dict  # seed -> ours in %, None where the run has not finished
    summary: Optional[Summary]
    delta: Optional[Interval]  # ours minus the baseline row, paired by seed; None for a baseline row
    paper_delta: Optional[float]  # the paper's row minus its baseline; None for a baseline row
    per_class: Optional[list]  # ours per class of row.per_class (mean over seeds), when the classes match

    @property
    def is_baseline(self) -> bool:
        return self.row.baseline == self.row.id

    @property
    def minus_paper(self) -> Optional[float]:
        return None if self.summary is None else self.summary.mean - self.row.paper

    @property
    def agrees(self) -> Optional[bool]:
        return None if self.delta is None or self.paper_delta is None else sign_agrees(self.delta.mean,
                                                                                       self.paper_delta)


def value_at(metrics: dict, path: str) -> float:
    """``metrics`` at the dotted ``path`` (``miou``, ``crf.1.miou``), in %."""
    node = metrics
    for key in path.split("."):
        node = node[key]
    return 100 * float(node)


def results(table: Table, runs: Sequence[Run], seeds: Sequence[int]) -> list[RowResult]:
    metrics = {id(run): run.read() for run in runs}
    run_of = {(row_id, run.seed): run for run in runs for row_id in run.rows}
    values, class_ious = {}, {}
    for row in table.rows:
        found = {seed: metrics[id(run_of[row.id, seed])] if (row.id, seed) in run_of else None for seed in seeds}
        values[row.id] = {seed: None if m is None else value_at(m, row.result) for seed, m in found.items()}
        if row.per_class:
            names = list(row.per_class)
            ious = [m["iou"] for m in found.values() if m is not None and m.get("class_names") == names]
            class_ious[row.id] = [100 * sum(c) / len(c) for c in zip(*ious)] if ious else None
    rows = []
    for row in table.rows:
        baseline = row.baseline != row.id
        rows.append(RowResult(
            row=row, values=values[row.id], summary=summarize(list(values[row.id].values())),
            delta=paired_difference(values[row.id], values[row.baseline]) if baseline else None,
            paper_delta=row.paper - table.row(row.baseline).paper if baseline else None,
            per_class=class_ious.get(row.id)))
    return rows


# ---------------------------------------------------------------- text of one cell

def number(x: Optional[float], signed: bool = False) -> str:
    return "" if x is None else f"{x:+.2f}" if signed else f"{x:.2f}"


def ours_text(summary: Optional[Summary], pm: str = "±") -> str:
    if summary is None:
        return "missing"
    spread = f" {pm} {summary.std:.2f}" if summary.std is not None else ""
    return f"{summary.mean:.2f}{spread} (n={summary.n})"


def delta_text(result: RowResult) -> str:
    if result.is_baseline:
        return "baseline"
    delta = result.delta
    if delta is None:
        return ""
    interval = f" [{delta.low:+.2f}, {delta.high:+.2f}]" if delta.low is not None else ""
    return f"{delta.mean:+.2f}{interval} (n={delta.n})"


def agrees_text(agrees: Optional[bool]) -> str:
    return "" if agrees is None else "yes" if agrees else "no"


def tau_text(rows: Sequence[RowResult]) -> str:
    tau = kendall_tau([r.row.paper for r in rows], [r.summary.mean if r.summary else None for r in rows])
    if tau is None:
        return "Kendall's tau between the paper's values and ours: needs two rows with results."
    if math.isnan(tau.tau):
        return f"Kendall's tau between the paper's values and ours: undefined over {tau.n} rows (all tied)."
    return f"Kendall's tau between the paper's values and ours: {tau.tau:.2f} over {tau.n} rows (p = {tau.p:.2f})."


def row_command(row: Row, table: Table) -> str:
    if not row.trains:
        return (f"`segrepro eval` of {row.evaluates}'s final checkpoint: `{' '.join(row.overrides)}`"
                f" (result {row.result})")
    source = f" (the runs of {'/'.join(row.home)})" if row.home[0] != table.name else ""
    return f"`experiment={row.recipe} {' '.join(row.overrides)}`{source}"


def run_status(run: Run) -> str:
    if run.finished():
        return "finished"
    return "unfinished" if run.folder.is_dir() else "not run"


def commits(run: Run) -> list[str]:
    starts = read_record(run).get("starts", [])
    return list(dict.fromkeys(start["commit"] or "unknown" for start in starts))


# ---------------------------------------------------------------- files

def markdown(table: Table, scale: Scale, seeds: Sequence[int], rows: Sequence[RowResult],
             runs: Sequence[Run]) -> str:
    baseline_ids = sorted({r.row.baseline for r in rows})
    lines = [f"# {table.title}", "",
             f"{table.paper} paper, Table {table.number}; {table.metric}. Scale **{scale.name}**: "
             f"{scale.description}. Seeds: {', '.join(map(str, seeds))}. "
             f"Baseline{'s' if len(baseline_ids) > 1 else ''}: {', '.join(baseline_ids)}.", "",
             "| row | label | paper | ours (mean ± std, n) | ours − paper | ours − baseline [95 % CI] "
             "| paper − baseline | same sign |",
             "|---|---|---:|---:|---:|---:|---:|:-:|"]
    for r in rows:
        lines.append(f"| {r.row.id} | {r.row.label} | {r.row.paper:.2f} | {ours_text(r.summary)} | "
                     f"{number(r.minus_paper, signed=True)} | {delta_text(r)} | "
                     f"{number(r.paper_delta, signed=True)} | {agrees_text(r.agrees)} |")
    lines += ["", tau_text(rows)]
    if table.cited:
        cited = "; ".join(f"{c['label']} {float(c['paper']):.2f}" for c in table.cited)
        lines += ["", f"Cited in the paper from other work, not rerun: {cited}."]
    lines += crf_seconds_lines(rows, runs) + per_class_lines(rows, runs)
    lines += ["", "## Runs", "",
              f"Scale {scale.name} overrides, after each row's (they win where both set a key): "
              f"`{' '.join(scale.overrides) or '(none)'}`. Each training is `segrepro train` with the overrides "
              "below, the scale's, `trainer.seed=K trainer.resume=auto hydra.run.dir=FOLDER`; the exact "
              "commands are in runs.json.", "",
              "| row | overrides |", "|---|---|"]
    lines += [f"| {r.row.id} | {row_command(r.row, table)} |" for r in rows]
    started = [run for run in runs if run_status(run) != "not run"]
    lines += ["", "| rows | seed | status | commit | seconds | folder |", "|---|---|---|---|---:|---|"]
    for run in started:
        lines.append(f"| {'+'.join(run.rows)} | {run.seed} | {run_status(run)} | {', '.join(commits(run))} | "
                     f"{read_record(run).get('seconds', '')} | {run.folder} |")
    if len(started) < len(runs):
        lines += ["", f"{len(runs) - len(started)} of the {len(runs)} runs not started yet (their commands: runs.json)."]
    return "\n".join(lines) + "\n"


def crf_seconds_lines(rows: Sequence[RowResult], runs: Sequence[Run]) -> list[str]:
    """The paper's CRF seconds per image beside ours (one run of the largest step count gives all rows)."""
    timed = [r for r in rows if r.row.paper_seconds_per_image is not None]
    if not timed:
        return []
    measured = [run.read()["crf_seconds_per_image"] for run in runs
                if run.finished() and set(run.rows) & {r.row.id for r in timed}]
    ours = f"{sum(measured) / len(measured):.3f} s (mean over {len(measured)} runs)" if measured else "missing"
    paper = ", ".join(f"{r.row.id} {r.row.paper_seconds_per_image} s" for r in timed)
    return ["", f"CRF seconds per image: paper about {paper}; ours {ours}, one run of the largest "
                "step count giving every step count's result."]


def per_class_lines(rows: Sequence[RowResult], runs: Sequence[Run]) -> list[str]:
    with_classes = [r for r in rows if r.row.per_class]
    if not with_classes:
        return []
    names = list(with_classes[0].row.per_class)
    if all(r.per_class is None for r in with_classes):
        ran = next((m.get("class_names") for m in (run.read() for run in runs) if m is not None), None)
        why = (f"the runs' classes ({len(ran)}: {', '.join(ran[:3])}, ...) are not the paper's"
               if ran else "no run has finished")
        return ["", f"Per class: {why}; not compared."]
    head = " | ".join(f"{r.row.id} paper | {r.row.id} ours" for r in with_classes)
    lines = ["", "## Per class (IoU %)", "", f"| class | {head} |", "|---|" + "---:|" * (2 * len(with_classes))]
    for i, name in enumerate(names):
        cells = " | ".join(f"{r.row.per_class[name]:.2f} | {number(r.per_class[i]) if r.per_class else 'missing'}"
                           for r in with_classes)
        lines.append(f"| {name} | {cells} |")
    return lines


def write_csv(rows: Sequence[RowResult], seeds: Sequence[int], path: Path) -> None:
    """One line per row; empty fields where a value is missing or undefined."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["row", "label", "baseline", "paper", "n", "mean", "std", "minus_paper", "delta_n",
                         "delta_mean", "delta_low95", "delta_high95", "paper_delta", "same_sign",
                         *(f"seed{seed}" for seed in seeds)])

        def cell(x):
            return "" if x is None else f"{x:.4f}" if isinstance(x, float) else x

        for r in rows:
            s, d = r.summary, r.delta
            writer.writerow([cell(v) for v in (
                r.row.id, r.row.label, r.row.baseline, r.row.paper, s and s.n, s and s.mean, s and s.std,
                r.minus_paper, d and d.n, d and d.mean, d and d.low, d and d.high, r.paper_delta,
                agrees_text(r.agrees), *(r.values[seed] for seed in seeds))])


def tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                          ("^", r"\textasciicircum{}")):
        text = text.replace(char, escaped)
    return text


def tex(table: Table, scale: Scale, rows: Sequence[RowResult]) -> str:
    """A booktabs tabular (``\\usepackage{booktabs}``); the baseline rows are marked with a dagger."""
    def signed(x):
        return "" if x is None else f"${x:+.2f}$"

    lines = [f"% {tex_escape(table.title)}; scale {scale.name}: {tex_escape(scale.description)}",
             r"\begin{tabular}{lrrrrr}", r"\toprule",
             r"Method & Paper & Ours & Ours $-$ paper & $\Delta$ ours (95\,\% CI) & $\Delta$ paper \\",
             r"\midrule"]
    for r in rows:
        label = tex_escape(r.row.label) + (r"$^\dagger$" if r.is_baseline else "")
        ours = "missing" if r.summary is None else (
            f"${r.summary.mean:.2f}" + (rf" \pm {r.summary.std:.2f}" if r.summary.std is not None else "") + "$")
        d = r.delta
        delta = "" if d is None else f"${d.mean:+.2f}$" + (
            f" [${d.low:+.2f}$, ${d.high:+.2f}$]" if d.low is not None else "")
        lines.append(f"{label} & {r.row.paper:.2f} & {ours} & {signed(r.minus_paper)} & {delta} & "
                     f"{signed(r.paper_delta)} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"% $^\dagger$ baseline; $\Delta$: minus the baseline, paired by seed"]
    return "\n".join(lines) + "\n"


def plot(table: Table, scale: Scale, rows: Sequence[RowResult], path: Path) -> None:
    """Left: the paper's value and ours (mean, std error bar) per row; right: each row minus its
    baseline, the paper's and ours (95 % interval). Baseline rows are shaded."""
    plt = pyplot()

    ys = list(range(len(rows)))
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(11, 1.6 + 0.42 * len(rows)))
    for y, r in zip(ys, rows):
        if r.is_baseline:
            for axis in (left, right):
                axis.axhspan(y - 0.5, y + 0.5, color="0.9", zorder=0)
        if r.summary is None:
            left.annotate("missing", (r.row.paper, y), xytext=(8, -3), textcoords="offset points", fontsize=8)
    left.scatter([r.row.paper for r in rows], ys, marker="o", facecolors="none", edgecolors="C0", label="paper")
    done = [(y, r) for y, r in zip(ys, rows) if r.summary is not None]
    if done:
        left.errorbar([r.summary.mean for _, r in done], [y for y, _ in done], fmt="s", color="C1", capsize=3,
                      xerr=[r.summary.std or 0.0 for _, r in done], label="ours (mean ± std)")
    compared = [(y, r) for y, r in zip(ys, rows) if r.paper_delta is not None]
    right.scatter([r.paper_delta for _, r in compared], [y for y, _ in compared], marker="o", facecolors="none",
                  edgecolors="C0", label="paper")
    measured = [(y, r) for y, r in compared if r.delta is not None]
    if measured:
        low = [r.delta.mean - r.delta.low if r.delta.low is not None else 0.0 for _, r in measured]
        high = [r.delta.high - r.delta.mean if r.delta.high is not None else 0.0 for _, r in measured]
        right.errorbar([r.delta.mean for _, r in measured], [y for y, _ in measured], xerr=[low, high], fmt="s",
                       color="C1", capsize=3, label="ours (95 % CI)")
    right.axvline(0, color="0.5", linewidth=0.8)
    left.set_yticks(ys, [r.row.id + (" (baseline)" if r.is_baseline else "") for r in rows])
    left.invert_yaxis()
    left.set_xlabel("mIoU (%)")
    right.set_xlabel("minus the baseline (mIoU points)")
    for axis in (left, right):
        axis.legend(fontsize=8, loc="best")
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{table.title}\nscale {scale.name}: {scale.description}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def plot_per_class(table: Table, rows: Sequence[RowResult], path: Path) -> bool:
    """Per-class IoU, the paper's beside ours, one panel per row that the paper gives per class (SSL
    Tables 1 and 4); False (nothing drawn) when no such row has our per-class values."""
    compared = [r for r in rows if r.row.per_class and r.per_class is not None]
    if not compared:
        return False
    plt = pyplot()

    names = list(compared[0].row.per_class)
    xs = list(range(len(names)))
    fig, axes = plt.subplots(len(compared), 1, sharex=True, squeeze=False, figsize=(11, 2.4 * len(compared) + 1))
    for axis, r in zip(axes[:, 0], compared):
        axis.bar([x - 0.2 for x in xs], [r.row.per_class[n] for n in names], width=0.4, color="C0", label="paper")
        axis.bar([x + 0.2 for x in xs], r.per_class, width=0.4, color="C1", label="ours (mean over seeds)")
        axis.set_ylabel(f"{r.row.id}\nIoU (%)", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    axes[-1, 0].set_xticks(xs, names, rotation=60, ha="right", fontsize=8)
    fig.suptitle(f"{table.title}: per-class IoU", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    return True


def write_report(table: Table, scale: Scale, seeds: Sequence[int], runs: Sequence[Run], folder: Path) -> Path:
    """Write the report into ``folder``: table.md, .csv, .tex, .png, runs.json, the qualitative figure
    (qualitative.png) and, for tables with the paper's per-class values, per_class.png; the path of
    ``table.md``."""
    rows = results(table, runs, seeds)
    folder = Path(folder)
    text = markdown(table, scale, seeds, rows, runs)
    with atomic_write(folder / "table.md", "w", encoding="utf-8") as file:
        file.write(text)
    write_csv(rows, seeds, folder / "table.csv")
    with atomic_write(folder / "table.tex", "w", encoding="utf-8") as file:
        file.write(tex(table, scale, rows))
    plot(table, scale, rows, folder / "table.png")
    values = {r.row.id: r.values for r in rows}
    write_json({
        "table": table.name, "title": table.title, "seeds": list(seeds),
        "scale": {"name": scale.name, "description": scale.description, "overrides": list(scale.overrides)},
        "runs": [{"kind": run.kind, "rows": list(run.rows), "seed": run.seed, "folder": str(run.folder),
                  "command": run.command, "status": run_status(run), "commits": commits(run),
                  "seconds": read_record(run).get("seconds"),
                  "values": {row_id: values[row_id][run.seed] for row_id in run.rows}}
                 for run in runs],
    }, folder / "runs.json")
    # the figures last: the numbers are written whatever happens to them
    figures = []
    if plot_per_class(table, rows, folder / "per_class.png"):
        figures.append("per_class.png: per-class IoU, the paper's beside ours")
    not_drawn = write_qualitative(table.title, [r.row for r in rows], runs, folder / "qualitative.png")
    figures.append(f"qualitative.png not drawn: {not_drawn}" if not_drawn else
                   "qualitative.png: validation images, input | truth | each row's prediction")
    with atomic_write(folder / "table.md", "w", encoding="utf-8") as file:
        file.write(text + "\n" + "\n".join(f"- {f}" for f in figures) + "\n")
    return folder / "table.md"
