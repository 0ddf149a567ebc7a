"""The qualitative figure of a table, as LAD Figure 3 draws it: the same validation images in every
column, input | ground truth | each training row's prediction, in the dataset's palette
(``qualitative.png`` beside ``table.md``).

Each row's prediction comes from the final checkpoint of its first finished seed, on the images of
that run's own validation split (``data.val_split`` of the checkpoint's config, one forward pass at
scale 1, no CRF). The images are ``count`` evenly spaced indices of that split, so every row shows
the same ones; the input and the truth are drawn from the first row's dataset.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data import build_dataset
from ..data.voc import colour_map
from ..engine.distributed import pick_device
from ..engine.evaluator import to_uint8_images
from ..engine.visualize import colorize
from ..evaluate import checkpoint_model, read_checkpoint
from ..files import write_json
from .plan import Run
from .runner import one_line
from .plots import pyplot, save_png

COUNT = 4  # images in the figure


def image_indices(length: int, count: int = COUNT) -> list[int]:
    """``count`` indices spread evenly over a split of ``length`` images (all of them if fewer)."""
    return sorted({round(i) for i in np.linspace(0, length - 1, min(count, length))})


@torch.no_grad()
def predict(checkpoint: Path, count: int = COUNT) -> dict:
    """The inputs (uint8 RGB), truths and predictions (colour images ``[K, H, W, 3]``) of a checkpoint
    on ``image_indices`` of its validation split."""
    state, cfg = read_checkpoint(checkpoint)
    device = pick_device(cfg.trainer.device)
    model = checkpoint_model(state, cfg.model, cfg.data.num_classes).to(device).eval()
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    palette = getattr(dataset, "palette", None) or colour_map(cfg.data.num_classes)
    inputs, truths, predictions = [], [], []
    for index in image_indices(len(dataset), count):
        image, label = dataset[index]
        prediction = model(image[None].to(device)).argmax(1).cpu()
        inputs.append(to_uint8_images(image[None], cfg.data.mean, cfg.data.std)[0])
        truths.append(colorize(label[None], palette, cfg.data.ignore_index)[0].permute(1, 2, 0).numpy())
        predictions.append(colorize(prediction, palette, cfg.data.ignore_index)[0].permute(1, 2, 0).numpy())
    return {"inputs": inputs, "truths": truths, "predictions": predictions}


def first_checkpoint(runs: Sequence[Run], row_id: str) -> Optional[Path]:
    """The final checkpoint of the lowest finished seed of a training row; None if none finished."""
    for run in sorted(runs, key=lambda r: r.seed):
        if run.kind == "train" and row_id in run.rows and run.finished() and run.checkpoint.is_file():
            return run.checkpoint
    return None


def draw(columns: dict, path: Path, title: str) -> None:
    """``columns``: label -> list of ``[H, W, 3]`` images (one per figure row), left to right."""
    plt = pyplot()

    labels = list(columns)
    count = len(columns[labels[0]])
    height, width = columns[labels[0]][0].shape[:2]
    size = 2.0
    fig, axes = plt.subplots(count, len(labels), squeeze=False,
                             figsize=(size * len(labels), size * count * height / width + 0.6))
    for j, label in enumerate(labels):
        for i, image in enumerate(columns[label]):
            axes[i][j].imshow(image)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
        axes[0][j].set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def write_qualitative(table_title: str, rows: Sequence, runs: Sequence[Run], path: Path,
                      count: int = COUNT) -> Optional[str]:
    """Draw the figure of the training ``rows`` (spec rows) that have a finished run into ``path``
    (``qualitative.json`` beside it names the checkpoints: the same ones are not drawn again); None
    when drawn, else why not (no row has finished; an error, e.g. the images cannot be read here)."""
    trained = [(row, first_checkpoint(runs, row.id)) for row in rows if row.trains]
    trained = [(row, checkpoint) for row, checkpoint in trained if checkpoint is not None]
    if not trained:
        return "no row has a finished run yet"
    drawn = {row.id: str(checkpoint) for row, checkpoint in trained}
    record = path.with_suffix(".json")  # the checkpoints the figure on disk shows
    if path.is_file() and record.is_file() and json.loads(record.read_text()) == drawn:
        return None
    columns = {}
    try:
        for row, checkpoint in trained:
            predicted = predict(checkpoint, count)
            if not columns:
                columns = {"input": predicted["inputs"], "ground truth": predicted["truths"]}
            columns[row.id] = predicted["predictions"]
    except Exception as exc:  # a figure never costs the table: say why and go on
        return f"{type(exc).__name__}: {one_line(exc)}"
    draw(columns, path, f"{table_title}: validation images, each row's prediction (first finished seed)")
    write_json(drawn, record)
    return None
