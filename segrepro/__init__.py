"""segrepro: reproduce the LAD and SSL segmentation-loss papers."""

__version__ = "0.1.0"
