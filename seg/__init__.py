"""seg: config-driven 2D image segmentation with PyTorch."""

__version__ = "0.1.0"
