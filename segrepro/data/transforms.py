"""Input pipelines (albumentations): the papers' training augmentation and plain validation.

Training (LAD Sec. 4.1, SSL Sec. 4.1, as in TF DeepLab's input pipeline): one
random scale factor drawn uniformly from ``data.scale_range`` for both sides
(image bilinear, label nearest), pad bottom and right up to the crop size
(mean pixel for the image, ``ignore_index`` for the label), random crop of
``data.crop_size`` squared, random horizontal flip (``data.flip``), mean/std
normalization. Validation: the original image, only normalized (the model pads
internally; metrics at the label's resolution).
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch


class SegTransform:
    """Wrap an albumentations pipeline: ``(uint8 HxWx3, int HxW) -> (float [3,H,W], int64 [H,W])``."""

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def reseed(self, seed: int) -> None:
        """Seed every random step (the trainer seeds each sample by (seed, epoch, index))."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, label: np.ndarray):
        out = self.pipeline(image=image, mask=label)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        label = torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
        return image, label


def build_transform(data_cfg, train: bool) -> SegTransform:
    """The training or validation pipeline of ``data_cfg`` (a ``DataConfig``)."""
    mean, std = list(data_cfg.mean), list(data_cfg.std)
    normalize = A.Normalize(mean=mean, std=std, max_pixel_value=255.0)
    if not train:
        return SegTransform(A.Compose([normalize]))
    crop = int(data_cfg.crop_size)
    lo, hi = (float(v) for v in data_cfg.scale_range)
    if crop < 1:
        raise ValueError(f"data.crop_size must be >= 1, got {crop}")
    if not 0 < lo <= hi:
        raise ValueError(f"data.scale_range must be [low, high] with 0 < low <= high, got {[lo, hi]}")
    mean_pixel = tuple(int(round(255 * m)) for m in mean)
    steps = [
        # RandomScale draws its factor from 1 + scale_limit, hence the shifted range.
        A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
        A.PadIfNeeded(min_height=crop, min_width=crop, position="top_left",
                      border_mode=cv2.BORDER_CONSTANT, fill=mean_pixel, fill_mask=int(data_cfg.ignore_index)),
        A.RandomCrop(height=crop, width=crop),
    ]
    if data_cfg.flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(normalize)
    return SegTransform(A.Compose(steps))
