"""The losses of the LAD and SSL papers; torch is their only dependency.

One module per loss over the shared functional core in ``_functional``.
"""
from .bce import BCELoss
from .center import CenterLoss
from .cross_entropy import CrossEntropyLoss
from .focal import FocalLoss
from .lad import LADLoss

__all__ = ["BCELoss", "CenterLoss", "CrossEntropyLoss", "FocalLoss", "LADLoss"]
