"""The losses of the LAD and SSL papers; torch is their only dependency.

One module per loss over the shared functional core in ``_functional``.
"""
from .bce import BCELoss
from .cross_entropy import CrossEntropyLoss

__all__ = ["BCELoss", "CrossEntropyLoss"]
