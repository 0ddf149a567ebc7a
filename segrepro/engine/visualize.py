"""Images for TensorBoard: inputs, ground truth and predictions in the dataset palette."""
from __future__ import annotations

import torch
from torchvision.utils import make_grid

from ..data.voc import colour_map

IGNORE_COLOR = (255, 255, 255)


def colorize(labels: torch.Tensor, palette, ignore_index: int = 255) -> torch.Tensor:
    """``[N, H, W]`` labels to ``[N, 3, H, W]`` uint8 colours; ignored pixels are white."""
    num = len(palette)
    table = torch.zeros(256, 3, dtype=torch.uint8)
    table[:num] = torch.tensor(palette, dtype=torch.uint8)
    table[ignore_index] = torch.tensor(IGNORE_COLOR, dtype=torch.uint8)
    return table[labels.long().clamp(0, 255)].permute(0, 3, 1, 2)


def label_grid(images, labels, pred, palette, data_cfg) -> dict[str, torch.Tensor]:
    """Grids for ``add_image``: the de-normalized inputs, the ground truth and the prediction."""
    palette = palette or colour_map(data_cfg.num_classes)  # datasets without a palette get VOC's colours
    mean = torch.tensor(list(data_cfg.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(data_cfg.std)).view(1, 3, 1, 1)
    rgb = (images.float() * std + mean).clamp(0, 1)
    return {
        "input": make_grid(rgb, nrow=len(rgb)),
        "ground_truth": make_grid(colorize(labels, palette, data_cfg.ignore_index), nrow=len(rgb)),
        "prediction": make_grid(colorize(pred, palette, data_cfg.ignore_index), nrow=len(rgb)),
    }
