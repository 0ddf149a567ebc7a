"""DeepLab v2 / v3 / v3+ networks (segmentation-models-pytorch encoders) for inputs of any size."""
from .build import build_model
from .segmentation_net import SegmentationNet
from .weights import WeightsReport, load_weights

__all__ = ["SegmentationNet", "WeightsReport", "build_model", "load_weights"]
