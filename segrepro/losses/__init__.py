"""The losses of the LAD and SSL papers; torch is their only dependency.

One module per loss. To read a loss against its paper, start with
:mod:`segrepro.losses.reference` (each windowed loss in plain autograd, equation
by equation); the classes here are the fast forms, tested against it. Every
loss follows the protocol of :class:`SegmentationLoss` (``base.py``).
"""
from ._chunks import batch_strategy
from .affinity import AffinityFieldLoss
from .base import SegmentationLoss
from .bce import BCELoss
from .center import CenterLoss
from .cross_entropy import CrossEntropyLoss
from .focal import FocalLoss
from .lad import LADLoss
from .ssim import SSIMLoss
from .ssl import SSLLoss

__all__ = [
    "AffinityFieldLoss", "BCELoss", "CenterLoss", "CrossEntropyLoss", "FocalLoss", "LADLoss", "SSIMLoss", "SSLLoss", "SegmentationLoss",
    "batch_strategy",
]
