"""``build_model``: a :class:`ModelConfig` to a :class:`SegmentationNet`.

- ``deeplabv3`` / ``deeplabv3plus``: segmentation-models-pytorch's DeepLabV3 /
  DeepLabV3Plus (Chen et al. 2017 "Rethinking atrous convolution"; Chen et al.
  2018 "Encoder-decoder with atrous separable convolution"), the SSL paper's
  models (SSL Sec. 4.1), with any smp encoder or timm one (``tu-<name>``).
- ``deeplabv2``: an smp ResNet encoder with atrous convolution and the ASPP-V2
  head of :mod:`.deeplabv2`, the LAD paper's model (LAD Sec. 4.1).

``model.multi_grid`` sets DeepLabv3's multi-grid rates in the last block of a
ResNet encoder (:mod:`.multi_grid`).

The segmentation head gives logits at the feature stride; the wrapper upsamples
them (``bilinear`` or the LAD baseline's learned ``deconv``) to the input size.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import segmentation_models_pytorch as smp
import timm
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ModelConfig
from .deeplabv2 import ASPPV2, LastStage
from .multi_grid import apply_multi_grid
from .segmentation_net import SegmentationNet
from .upsampling import BilinearUpsample, LearnedDeconvUpsample
from .weights import load_weights

log = logging.getLogger(__name__)

OUTPUT_STRIDES = (8, 16)
UPSAMPLINGS = ("bilinear", "deconv")


def as_model_config(model_cfg: Any) -> ModelConfig:
    """A ``ModelConfig`` from a ``ModelConfig``, an omegaconf ``DictConfig`` or a plain dict with its keys."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), model_cfg)
    except OmegaConfBaseException as error:
        raise ValueError(f"bad model config ({error}); valid keys: {list(ModelConfig.__dataclass_fields__)}") from None
    return OmegaConf.to_object(merged)


def check_model_config(cfg: ModelConfig, num_classes: int) -> None:
    """Raise ``ValueError`` naming the key and the valid choices for a config that cannot be built."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch={cfg.arch!r} is not one of {list(ARCHITECTURES)}")
    if cfg.output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"model.output_stride={cfg.output_stride} is not one of {list(OUTPUT_STRIDES)}")
    if cfg.upsampling not in UPSAMPLINGS:
        raise ValueError(f"model.upsampling={cfg.upsampling!r} is not one of {list(UPSAMPLINGS)}")
    num_rates = ARCHITECTURES[cfg.arch].num_rates
    if num_rates is not None and len(cfg.atrous_rates) != num_rates:
        raise ValueError(f"model.atrous_rates: {cfg.arch} needs {num_rates} rates, got {list(cfg.atrous_rates)}")
    if not cfg.atrous_rates:
        raise ValueError(f"model.atrous_rates: {cfg.arch} needs at least one rate, got []")
    if cfg.multi_grid is not None and not (cfg.multi_grid and all(rate >= 1 for rate in cfg.multi_grid)):
        raise ValueError(f"model.multi_grid={list(cfg.multi_grid)}: one rate of at least 1 per unit of the "
                         "last block, e.g. [1, 2, 4], or null")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if cfg.encoder.startswith("tu-"):
        if not timm.is_model(cfg.encoder[3:]):
            raise ValueError(f"model.encoder={cfg.encoder!r}: timm has no model {cfg.encoder[3:]!r}")
    elif cfg.encoder not in smp.encoders.get_encoder_names():
        raise ValueError(
            f"model.encoder={cfg.encoder!r} is not an smp encoder "
            "(see segmentation_models_pytorch.encoders.get_encoder_names(), or use 'tu-<timm model name>')"
        )


def _deeplabv2_parts(cfg: ModelConfig, num_classes: int, encoder_weights: Optional[Any]) -> tuple:
    """An smp ResNet encoder with atrous convolution and the ASPP-V2 head (LAD Sec. 4.1)."""
    encoder = smp.encoders.get_encoder(cfg.encoder, weights=encoder_weights, output_stride=cfg.output_stride)
    channels = encoder.out_channels[-1]
    head = ASPPV2(channels, num_classes, cfg.atrous_rates)
    return encoder, LastStage(), head, channels, cfg.output_stride


def _smp_parts(smp_class, feature_stride: Optional[int], cfg: ModelConfig, num_classes: int,
               encoder_weights: Optional[Any]) -> tuple:
    """smp's DeepLabV3 / DeepLabV3Plus; ``feature_stride`` None: the output stride."""
    net = smp_class(
        encoder_name=cfg.encoder,
        encoder_weights=encoder_weights,
        encoder_output_stride=cfg.output_stride,
        decoder_atrous_rates=tuple(cfg.atrous_rates),
        decoder_channels=cfg.decoder_channels,
        classes=num_classes,
        upsampling=1,  # the head gives logits at the feature stride; SegmentationNet upsamples
    )
    stride = feature_stride or cfg.output_stride
    return net.encoder, net.decoder, net.segmentation_head, cfg.decoder_channels, stride


class Architecture(NamedTuple):
    """``parts(cfg, num_classes, encoder weights) -> (encoder, decoder, head, feature_dim, feature_stride)``;
    ``num_rates``: how many ``model.atrous_rates`` it takes (None: one or more); ``image_pooling``: whether
    it has DeepLabv3's image-level branch (global average pooling, 1x1 convolution, BN), whose BN sees
    one value per channel and image."""

    parts: Callable
    num_rates: Optional[int]
    image_pooling: bool


ARCHITECTURES = {  # model.arch
    "deeplabv2": Architecture(_deeplabv2_parts, None, False),
    "deeplabv3": Architecture(partial(_smp_parts, smp.DeepLabV3, None), 3, True),
    # DeepLabv3+'s decoder fuses the ASPP output with the stride-4 encoder stage
    "deeplabv3plus": Architecture(partial(_smp_parts, smp.DeepLabV3Plus, 4), 3, True),
}


def has_image_pooling(arch: str) -> bool:
    """Whether ``model.arch`` has an image-pooling branch (False for an unknown name)."""
    return arch in ARCHITECTURES and ARCHITECTURES[arch].image_pooling


def _build_parts(cfg: ModelConfig, num_classes: int, encoder_weights: Optional[Any]) -> tuple:
    """(encoder, decoder, segmentation head, feature_dim, feature_stride) of the architecture."""
    return ARCHITECTURES[cfg.arch].parts(cfg, num_classes, encoder_weights)


class PretrainedWeightsError(ValueError):
    """``model.pretrained=true`` and the ImageNet weights cannot be had: stop before training from scratch."""


def pretrained_source(encoder: str) -> str:
    """Where smp / timm download ``encoder``'s ImageNet weights from (a Hugging Face hub repo)."""
    try:
        if encoder.startswith("tu-"):
            return f"the Hugging Face hub repo {timm.models.get_pretrained_cfg(encoder[3:]).hf_hub_id}"
        return f"the Hugging Face hub repo {smp.encoders.encoders[encoder]['pretrained_settings']['imagenet']['repo_id']}"
    except Exception:
        return "the Hugging Face hub"


def _build_parts_pretrained(cfg: ModelConfig, num_classes: int) -> tuple:
    """The parts with ImageNet encoder weights; :class:`PretrainedWeightsError` if they cannot be had."""
    from huggingface_hub.constants import HF_HUB_CACHE

    imagenet = True if cfg.encoder.startswith("tu-") else "imagenet"  # smp's spelling for timm / own encoders
    try:
        return _build_parts(cfg, num_classes, imagenet)
    except Exception as error:  # no network, no cached file, or no ImageNet weights for this encoder
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise PretrainedWeightsError(
            f"model.pretrained=true, but the ImageNet weights of encoder {cfg.encoder} cannot be loaded "
            f"({reason}). They come from {pretrained_source(cfg.encoder)}: download them once on a machine "
            f"with internet into the Hugging Face cache ({HF_HUB_CACHE}, or where HF_HOME points), or give a "
            "local file with model.weights=PATH. To train from random init on purpose: model.pretrained=false."
        ) from None


def build_model(model_cfg: Any, num_classes: int, from_checkpoint: bool = False) -> SegmentationNet:
    """The network of ``model_cfg`` (a ModelConfig, DictConfig or dict) with ``num_classes`` outputs.

    ``model.pretrained`` asks for the encoder's ImageNet weights (an error if they cannot be had);
    ``model.weights`` loads a local file instead (no download). ``from_checkpoint``: the caller loads
    every weight from a checkpoint next, so neither is fetched."""
    cfg = as_model_config(model_cfg)
    check_model_config(cfg, num_classes)
    if from_checkpoint:
        parts = _build_parts(cfg, num_classes, None)
    elif cfg.pretrained and cfg.weights is None:
        parts = _build_parts_pretrained(cfg, num_classes)
    else:
        if not cfg.pretrained and cfg.weights is None:
            log.warning("model.pretrained is false and model.weights is not set: "
                        "%s / %s trains from scratch (random init)", cfg.arch, cfg.encoder)
        parts = _build_parts(cfg, num_classes, None)
    encoder, decoder, head, feature_dim, feature_stride = parts
    if cfg.multi_grid is not None:
        apply_multi_grid(encoder, cfg.multi_grid, cfg.output_stride, cfg.encoder)
    if cfg.upsampling == "deconv":
        upsample = LearnedDeconvUpsample(num_classes, feature_stride)
    else:
        upsample = BilinearUpsample(feature_stride)
    model = SegmentationNet(encoder, decoder, head, upsample, feature_dim, feature_stride,
                            size_multiple=cfg.output_stride)
    if cfg.weights is not None and not from_checkpoint:
        load_weights(model, cfg.weights)
    return model
