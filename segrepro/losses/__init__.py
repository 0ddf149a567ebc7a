"""The losses of the LAD and SSL papers; torch is their only dependency.

One module per loss over the shared functional core in ``_functional``.
"""
from .affinity import AffinityFieldLoss
from .bce import BCELoss
from .center import CenterLoss
from .cross_entropy import CrossEntropyLoss
from .focal import FocalLoss
from .lad import LADLoss
from .ssim import SSIMLoss
from .ssl import SSLLoss

__all__ = [
    "AffinityFieldLoss", "BCELoss", "CenterLoss", "CrossEntropyLoss", "FocalLoss", "LADLoss", "SSIMLoss", "SSLLoss",
]
