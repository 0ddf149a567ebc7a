"""The wrapper every model is: encoder -> decoder -> segmentation head -> upsampling, for any input size."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationNet(nn.Module):
    """Pixel logits at input resolution for images of any size.

    The input is zero-padded at the bottom and right to a multiple of
    ``size_multiple`` (zero is the mean pixel once normalized), the logits
    (at ``1 / feature_stride`` of the padded size) are upsampled by
    ``feature_stride`` and cropped back to the input size. Submodule names
    follow segmentation-models-pytorch (``encoder``, ``decoder``,
    ``segmentation_head``), so an smp state dict loads as is.
    ``segmentation_head`` is the classifier, the layers that give the logits (DeepLab v2:
    the ASPP-L branches; v3 / v3+: the 1x1 convolution after the decoder): the head that
    ``optim.head_lr_mult`` / ``optim.head_bias_lr_mult`` speed up.

    ``forward(images, return_features=True)`` also returns the decoder features
    that feed the head (``[N, feature_dim, ceil(H / s), ceil(W / s)]`` with
    ``s = feature_stride``: the cells that cover the unpadded input), which the
    center loss needs.

    :meth:`freeze_batchnorm` keeps every BN layer at its running statistics with
    frozen affine parameters from then on, whatever ``train()`` is called with.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        segmentation_head: nn.Module,
        upsample: nn.Module,
        feature_dim: int,
        feature_stride: int,
        size_multiple: int,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.upsample = upsample
        self.feature_dim = feature_dim
        self.feature_stride = feature_stride
        self.size_multiple = size_multiple
        self.batchnorm_frozen = False

    def batchnorm_layers(self):
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def freeze_batchnorm(self) -> None:
        """BN layers in eval mode (running statistics fixed) and their affine parameters frozen, for good."""
        self.batchnorm_frozen = True
        for layer in self.batchnorm_layers():
            for p in layer.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.batchnorm_frozen:
            for layer in self.batchnorm_layers():
                layer.eval()
        return self

    def forward(self, images: torch.Tensor, return_features: bool = False):
        if images.dim() != 4:
            raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        pad_bottom = -height % self.size_multiple
        pad_right = -width % self.size_multiple
        padded = F.pad(images, (0, pad_right, 0, pad_bottom))
        features = self.decoder(self.encoder(padded))
        logits = self.upsample(self.segmentation_head(features))[..., :height, :width]
        if not return_features:
            return logits
        feature_height = math.ceil(height / self.feature_stride)
        feature_width = math.ceil(width / self.feature_stride)
        return logits, features[..., :feature_height, :feature_width]
