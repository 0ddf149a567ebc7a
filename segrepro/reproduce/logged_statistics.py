"""SSL Figure 3: the statistics of the normalized values during training, as the SSL runs log them.

``SSLLoss.terms()`` (``segrepro/losses/ssl.py``) gives, at every logged step, the extremes of
``p_nor`` and ``y_nor`` (Eq. 10) and the observed max, mean and median of ``e`` over the batch's
valid entries; the trainer writes them to TensorBoard as ``loss/<term>`` (``<stage>/tb/``). They are
read back here with TensorBoard's own event reader (every value kept: no reservoir sampling) and
plotted over the training steps: one panel for the extremes (``p_nor`` black, ``y_nor`` dark green,
as in the paper), one for ``e`` with the theoretical ``e_max`` of Eq. 11 as a dotted line. With
several seeds each line is the mean over the seeds at each step, the band their minimum to maximum;
the lines are smoothed as the paper's are ("The data is smoothed", TensorBoard's moving average),
the unsmoothed mean drawn faintly beside them. The CSV holds the values as logged, unsmoothed.
"""
from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Sequence

from tensorboard.backend.event_processing import event_accumulator

from ..config import ConfigError
from ..files import atomic_write
from .plan import Run
from .plots import pyplot, save_png
from .spec import Figure

# tag -> (panel, colour, line style, label); the paper: "The black line and dark green line represent
# the extreme value of p_nor and y_nor respectively"
STYLES = {"loss/norm_pred_min": (0, "black", "-", "p_nor min"),
          "loss/norm_pred_max": (0, "black", "--", "p_nor max"),
          "loss/norm_gt_min": (0, "darkgreen", "-", "y_nor min"),
          "loss/norm_gt_max": (0, "darkgreen", "--", "y_nor max"),
          "loss/e_max": (1, "C3", "-", "e max (observed)"),
          "loss/e_mean": (1, "C0", "-", "e mean"),
          "loss/e_median": (1, "C1", "-", "e median")}

# the tags the paper's two observations need
OBSERVED = {"loss/norm_pred_min", "loss/norm_pred_max", "loss/norm_gt_min", "loss/norm_gt_max", "loss/e_mean",
            "loss/e_median"}


def read_scalars(tb_folder: Path, tags: Sequence[str]) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from the event files of ``tb_folder``, every value kept
    (``size_guidance`` 0). A step logged twice (a run resumed from a checkpoint before it) keeps the
    value written last, the one the finished run's history holds."""
    accumulator = event_accumulator.EventAccumulator(str(tb_folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    logged = set(accumulator.Tags()[event_accumulator.SCALARS])
    missing = [tag for tag in tags if tag not in logged]
    if missing:
        raise ConfigError(f"{tb_folder}: {', '.join(missing)} not logged (the run's loss is not SSLLoss, or it "
                          "logged nothing: trainer.log_every)")
    return {tag: {event.step: event.value for event in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)}
            for tag in tags}


def run_scalars(run: Run, tags: Sequence[str]) -> dict[str, dict[int, float]]:
    """The tags over the whole training of ``run``: a later stage's steps come after the earlier
    stages' iterations (a recipe's fine-tune stage counts its own steps from 0)."""
    series: dict[str, dict[int, float]] = {tag: {} for tag in tags}
    offset = 0
    for folder, stage in zip(run.stage_folders, run.stages):
        for tag, values in read_scalars(folder / "tb", tags).items():
            series[tag].update({offset + step: value for step, value in values.items()})
        offset += int(stage.trainer.max_iters)
    return series


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: the exponential moving average with that ``weight``, debiased (the
    first points are not pulled toward 0)."""
    smoothed, last = [], 0.0
    for count, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        smoothed.append(last / (1 - weight ** count))
    return smoothed


def write_csv(by_seed: dict[int, dict[str, dict[int, float]]], tags: Sequence[str], path: Path) -> None:
    """One line per (seed, step): ``step, seed`` and each tag as logged; empty where a tag has no value."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "seed", *tags])
        for seed, series in by_seed.items():
            for step in sorted(set().union(*(series[tag] for tag in tags))):
                writer.writerow([step, seed, *(series[tag].get(step, "") for tag in tags)])


def across_seeds(by_seed: dict[int, dict[str, dict[int, float]]], tag: str) -> tuple[list, list, list, list]:
    """``(steps, mean, minimum, maximum)`` of ``tag`` over the seeds that logged each step."""
    steps = sorted(set().union(*(series[tag] for series in by_seed.values())))
    values = [[series[tag][step] for series in by_seed.values() if step in series[tag]] for step in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot(figure: Figure, by_seed: dict[int, dict[str, dict[int, float]]], e_max: float, subtitle: str,
         path: Path) -> None:
    plt = pyplot()

    fig, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for tag in figure.scalars:
        panel, colour, style, label = STYLES.get(tag, (1, None, "-", tag))
        axis = panels[panel]
        steps, mean, low, high = across_seeds(by_seed, tag)
        line, = axis.plot(steps, smooth(mean, figure.smoothing), color=colour, linestyle=style,
                          label=label)
        axis.plot(steps, mean, color=line.get_color(), linestyle=style, alpha=0.25, linewidth=0.8)
        if len(by_seed) > 1:
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
    panels[1].axhline(e_max, color="0.4", linestyle=":", label=f"theoretical e_max (Eq. 11) = {e_max:.3f}")
    panels[0].set_title("extremes of p_nor (black) and y_nor (dark green)", fontsize=9)
    panels[1].set_title("e = |y_nor - p_nor|: max, mean, median over the batch", fontsize=9)
    for axis in panels:
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    seeds = f"mean of {len(by_seed)} seeds, band min-max" if len(by_seed) > 1 else "one seed"
    details = f"{subtitle}; {seeds}; smoothed {figure.smoothing} (faint: unsmoothed)"
    fig.suptitle(f"{figure.title}\n{textwrap.fill(details, 150, break_on_hyphens=False)}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def summary_lines(figure: Figure, by_seed: dict[int, dict[str, dict[int, float]]], e_max: float) -> list[str]:
    """What was plotted, the last logged values and the paper's two observations checked on ours."""
    lines = [f"Plotted over the training steps: {', '.join(f'`{t}`' for t in figure.scalars)} "
             "(SSLLoss.terms(), read back from the runs' TensorBoard events), smoothed with TensorBoard's "
             f"moving average of weight {figure.smoothing}; the theoretical e_max of Eq. 11 is {e_max:.4f}.",
             "", "| tag | last logged value (mean over seeds) |", "|---|---:|"]
    for tag in figure.scalars:
        steps, mean, _, _ = across_seeds(by_seed, tag)
        lines.append(f"| {tag} | {mean[-1]:.4f} (step {steps[-1]}) |")
    if OBSERVED <= set(figure.scalars):
        total = narrower = mean_above = 0
        for series in by_seed.values():
            for step in series["loss/e_mean"]:
                largest_pred = max(abs(series["loss/norm_pred_min"][step]), abs(series["loss/norm_pred_max"][step]))
                largest_gt = max(abs(series["loss/norm_gt_min"][step]), abs(series["loss/norm_gt_max"][step]))
                total += 1
                narrower += largest_pred < largest_gt
                mean_above += series["loss/e_mean"][step] > series["loss/e_median"][step]
        lines += ["", "The paper's two observations (Sec. 3.3 and the caption), on our logged steps:",
                  f"- the largest |p_nor| below the largest |y_nor|: {narrower} of {total} steps",
                  f"- the mean of e above its median: {mean_above} of {total} steps"]
    return lines
