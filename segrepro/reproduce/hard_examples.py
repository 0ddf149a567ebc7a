"""SSL Figure 4: the share of hard examples against beta.

An entry (pixel, class) is hard when ``e > beta * e_max`` (SSL Eq. 11), ``e = |y_nor - p_nor|``
(Eq. 10) and ``e_max`` the theoretical range of Sec. 3.3. As in the loss (``SSLLoss``):

- ``e_max`` is **one constant**, ``SSLLoss.e_max`` of the run's ``region_size``, ``sigma`` and ``c4``,
  not a maximum per image or per batch;
- the share is **pooled**: the hard entries of every validation image over all their valid
  entries (the valid pixels times the classes), as ``SSLLoss.terms()['hard_fraction']`` pools ``M``
  over a batch, not a mean of per-image shares; ignored pixels are not counted at all.

``e`` comes from ``SSLLoss.error_map`` on the logits of the run's final checkpoint (model in eval
mode), one forward per validation image at its full size; every beta is counted from that one map,
so nothing is trained per beta. (The paper records the proportion during training; the run's own
beta is logged as ``loss/hard_fraction`` on the training crops.)
"""
from __future__ import annotations

import csv
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ConfigError
from ..data import build_dataset
from ..engine.build import build_loss
from ..engine.distributed import pick_device
from ..evaluate import checkpoint_model, read_checkpoint
from ..files import atomic_write
from ..losses import SSLLoss
from .plots import pyplot, save_png
from .spec import Figure
from .stats import summarize


@dataclass(frozen=True)
class HardCounts:
    """One checkpoint over the validation images: the hard entries at each beta, the valid entries."""

    betas: tuple[float, ...]
    hard: tuple[int, ...]
    valid: int
    e_max: float

    def percent(self) -> list[float]:
        return [100.0 * hard / self.valid for hard in self.hard]


def all_betas(figure: Figure) -> tuple[float, ...]:
    """The paper's betas and the finer grid, sorted, each once."""
    return tuple(sorted(set(figure.betas) | set(figure.finer_betas)))


def ssl_loss(cfg, figure: Figure) -> SSLLoss:
    """The loss of the run config ``cfg``; a :class:`ConfigError` unless it is the ``SSLLoss`` of the
    figure's region size and sigma."""
    loss = build_loss(cfg.loss, num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index)
    if not isinstance(loss, SSLLoss) or (loss.region_size, loss.sigma) != (figure.region_size, figure.sigma):
        raise ConfigError(f"{figure.name} is drawn with SSLLoss(region_size={figure.region_size}, sigma={figure.sigma})"
                          f"; the runs of {'/'.join(figure.row.home)} trained {cfg.loss._target_} "
                          f"({OmegaConf.to_container(cfg.loss)})")
    return loss


def count_hard(checkpoint: Path, figure: Figure, progress: bool = True) -> HardCounts:
    """Count the hard entries at every beta of the figure over the validation split of the
    checkpoint's own config."""
    state, cfg = read_checkpoint(checkpoint)
    device = pick_device(cfg.trainer.device)
    loss = ssl_loss(cfg, figure).to(device)
    betas = all_betas(figure)
    model = checkpoint_model(state, cfg.model, cfg.data.num_classes).to(device).eval()
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=cfg.data.num_workers)
    thresholds = [beta * loss.e_max for beta in betas]  # as SSLLoss compares: e > self.beta * self.e_max
    hard, valid = [0] * len(betas), 0
    with torch.no_grad():
        for images, labels in tqdm(loader, desc=f"e maps of {checkpoint.name}", leave=False, disable=not progress):
            images, labels = images.to(device), labels.to(device)
            e = loss.error_map(model(images), labels)  # [1, C, H, W]
            entries = e.movedim(1, -1)[labels != cfg.data.ignore_index]  # [valid pixels, C]
            valid += entries.numel()
            for k, threshold in enumerate(thresholds):
                hard[k] += int((entries > threshold).sum())
    return HardCounts(tuple(betas), tuple(hard), valid, loss.e_max)


def write_csv(figure: Figure, by_seed: dict[int, HardCounts], path: Path) -> None:
    """One line per (beta, seed): the counts and the share in %; ``paper_beta`` marks Table 3's betas."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["beta", "paper_beta", "seed", "hard_entries", "valid_entries", "hard_percent", "e_max"])
        for seed, counts in by_seed.items():
            for beta, hard, percent in zip(counts.betas, counts.hard, counts.percent()):
                writer.writerow([f"{beta:.4g}", "yes" if beta in figure.betas else "no", seed, hard, counts.valid,
                                 f"{percent:.6f}", f"{counts.e_max:.6f}"])


def plot(figure: Figure, by_seed: dict[int, HardCounts], subtitle: str, path: Path) -> None:
    """The share against beta (mean over the seeds, band min-max), Table 3's betas marked, the
    paper's value at its beta as a star."""
    plt = pyplot()

    betas = all_betas(figure)
    shares = list(zip(*(counts.percent() for counts in by_seed.values())))  # per beta, one per seed
    mean = [sum(s) / len(s) for s in shares]
    fig, axis = plt.subplots(figsize=(7, 4.5))
    seeds = f"mean of {len(by_seed)} seeds" if len(by_seed) > 1 else "one seed"
    axis.plot(betas, mean, color="C0", label=f"ours ({seeds})")
    if len(by_seed) > 1:
        axis.fill_between(betas, [min(s) for s in shares], [max(s) for s in shares], color="C0", alpha=0.15,
                          linewidth=0, label="min-max over seeds")
    marked = [(beta, share) for beta, share in zip(betas, mean) if beta in figure.betas]
    axis.plot(*zip(*marked), "o", color="C0", label="the betas of SSL Table 3")
    paper = figure.paper_hard_percent
    axis.plot([paper["beta"]], [paper["value"]], "*", color="C3", markersize=14,
              label=f"paper: about {paper['value']} % at beta {paper['beta']}")
    axis.set_xlabel("beta (hard: e > beta e_max, Eq. 11)")
    axis.set_ylabel("hard entries (% of the valid entries)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.suptitle(f"{figure.title}\n{textwrap.fill(subtitle, 90, break_on_hyphens=False)}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def summary_lines(figure: Figure, by_seed: dict[int, HardCounts]) -> list[str]:
    """What was computed and the share at Table 3's betas beside the paper's value."""
    any_counts = next(iter(by_seed.values()))
    paper = figure.paper_hard_percent
    lines = [f"Computed from each seed's final checkpoint over the {any_counts.valid:,} valid (pixel, class) "
             f"entries of the validation images (one forward per image, model in eval mode): the share of "
             f"entries with e > beta e_max (Eq. 11), e_max = {any_counts.e_max:.4f} (the loss's constant), "
             f"pooled over the images, at {len(all_betas(figure))} betas (the CSV has all).", "",
             "| beta | hard entries, ours (%, mean ± std over seeds) | paper (%) |", "|---:|---:|---:|"]
    for k, beta in enumerate(all_betas(figure)):
        if beta not in figure.betas:
            continue
        summary = summarize([counts.percent()[k] for counts in by_seed.values()])
        spread = f" ± {summary.std:.3f}" if summary.std is not None else ""
        paper_value = f"about {paper['value']}" if beta == paper["beta"] else ""
        lines.append(f"| {beta:g} | {summary.mean:.3f}{spread} (n={summary.n}) | {paper_value} |")
    return lines
