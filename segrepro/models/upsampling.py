"""Logit upsampling by the network's stride: fixed bilinear or a learned deconvolution.

Both map a logit map ``[N, C, h, w]`` to ``[N, C, f*h, f*w]`` with the same
geometry (``align_corners=False``: logit cell ``i`` is centred on input pixel
``f*i + (f-1)/2``), so the learned deconvolution of the LAD baseline (LAD
Sec. 4.1: "deconvolution layers with learned weights" before the softmax CE)
starts out as exactly the bilinear upsampling of the SSL models (SSL Sec. 4.1:
"we upscale the logits back to the input image resolution").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BilinearUpsample(nn.Module):
    """Fixed bilinear upsampling by an integer ``factor`` (``align_corners=False``)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, scale_factor=self.factor, mode="bilinear", align_corners=False)


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The 2D kernel ``[2f, 2f]`` of bilinear upsampling by ``f`` (as in FCN's deconvolution init)."""
    center = factor - 0.5
    taps = 1.0 - (torch.arange(2 * factor, dtype=torch.float32) - center).abs() / factor
    return taps[:, None] * taps[None, :]


class LearnedDeconvUpsample(nn.Module):
    """Per-class learned deconvolution (``ConvTranspose2d``, ``groups=num_classes``), initialized to bilinear.

    Kernel ``2f``, stride ``f``. The logits are first padded by one cell with
    their border values (replicate) and the transposed convolution's padding
    ``3f/2`` drops that extra cell again, so at initialization the output equals
    ``F.interpolate(logits, scale_factor=f, mode="bilinear", align_corners=False)``
    everywhere, the image border included (zero padding would fade the border
    ``f/2`` pixels towards 0).
    """

    def __init__(self, num_classes: int, factor: int):
        super().__init__()
        if factor % 2:
            raise ValueError(f"deconv upsampling needs an even factor, got {factor}")
        self.deconv = nn.ConvTranspose2d(
            num_classes, num_classes, kernel_size=2 * factor, stride=factor,
            padding=3 * factor // 2, groups=num_classes, bias=False,
        )
        with torch.no_grad():
            self.deconv.weight.copy_(bilinear_kernel(factor).expand_as(self.deconv.weight))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.deconv(F.pad(logits, (1, 1, 1, 1), mode="replicate"))
