"""DeepLabv3's multi-grid: a hierarchy of atrous rates inside the last ResNet block.

Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation", Sec. 3.2:
the three units of block4 get the unit rates ``Multi_Grid = (r1, r2, r3)`` times the block's
own rate, e.g. (1, 2, 4) at output stride 16 gives rates 2, 4, 8. In TF DeepLab
(``core/resnet_v1_beta.py``) the unit rate multiplies the rate of each bottleneck's 3x3
convolution (``conv2``); without the option every unit keeps rate 1 times the block's.

Here the block's rate is the one the output stride asks of the last stage of a stride-32
ResNet (2 at OS 16, 4 at OS 8), so every unit's rate is set, whatever dilation the encoder
library gave it (smp dilates every unit of the stage, timm keeps the first at the previous
stage's rate). Works on smp ResNet encoders and on timm ResNets (``tu-resnet101s`` ...).
"""
from __future__ import annotations

from typing import Optional, Sequence

from timm.models.resnet import Bottleneck as TimmBottleneck
from torch import nn
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

BOTTLENECKS = (TorchvisionBottleneck, TimmBottleneck)
RESNET_STRIDE = 32  # the stride of the last stage of a ResNet without atrous convolution


def last_bottleneck_stage(encoder: nn.Module) -> Optional[nn.Sequential]:
    """The last stage (``layer4``) of an smp or timm ResNet encoder made of bottleneck units, else None."""
    network = getattr(encoder, "model", encoder)  # smp's timm wrapper holds the timm network as .model
    stage = getattr(network, "layer4", None)
    if isinstance(stage, nn.Sequential) and len(stage) and all(isinstance(unit, BOTTLENECKS) for unit in stage):
        return stage
    return None


def apply_multi_grid(encoder: nn.Module, unit_rates: Sequence[int], output_stride: int, name: str) -> None:
    """Set the 3x3 convolution of unit ``i`` of the last block to rate ``unit_rates[i] * 32 / output_stride``,
    padding equal to the rate (the spatial size is kept). ``name`` (``model.encoder``) is for the errors."""
    stage = last_bottleneck_stage(encoder)
    if stage is None:
        raise ValueError("model.multi_grid needs a ResNet encoder with bottleneck units (e.g. resnet50, "
                         f"resnet101, tu-resnet101s); model.encoder={name!r} is not one (model.multi_grid=null "
                         "turns it off)")
    if len(unit_rates) != len(stage):
        raise ValueError(f"model.multi_grid={list(unit_rates)}: the last block of {name} has {len(stage)} "
                         f"units, so it needs {len(stage)} rates")
    block_rate = RESNET_STRIDE // output_stride
    for unit, unit_rate in zip(stage, unit_rates):
        rate = block_rate * unit_rate
        unit.conv2.dilation = (rate, rate)
        unit.conv2.padding = (rate, rate)
