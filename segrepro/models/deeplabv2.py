"""The DeepLab v2 head (Chen et al. 2017, Sec. 3.3 and Fig. 4): ASPP-L straight to the classes.

Used by the LAD paper (Sec. 4.1): a ResNet-101 with atrous convolution
(output stride 8) and atrous spatial pyramid pooling. Each branch is one 3x3
atrous convolution from the last backbone stage to the classes; the branch
outputs are summed. There is no decoder: the features that feed the classifier
are the last backbone stage itself.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn


class LastStage(nn.Module):
    """The "decoder" of DeepLab v2: picks the last encoder stage from the encoder's feature list."""

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return features[-1]


class ASPPV2(nn.Module):
    """Sum of 3x3 atrous convolutions ``in_channels -> num_classes``, one per rate (6, 12, 18, 24 in DeepLab v2).

    Initialized as in the DeepLab v2 Caffe models: weights from N(0, 0.01^2), biases 0.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=rate, dilation=rate) for rate in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return sum(branch(features) for branch in self.branches)
