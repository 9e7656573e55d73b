"""Segmentation models: every one maps [B,in_channels,H,W] floats to logits [B,n_classes,H,W].

The registry of models is the config group configs/model/ (one YAML per model, naming its class in
`_target_`); compose it and build with seg.engine.builders.build, or import a class directly.
"""

from __future__ import annotations

from seg.models.init import SCHEMES, init_weights
from seg.models.mobilenet_unet import MobileNetUNet
from seg.models.segnet import SegNet
from seg.models.unet import UNet, UNetWrapper

__all__ = [
    "SCHEMES",
    "MobileNetUNet",
    "SegNet",
    "UNet",
    "UNetWrapper",
    "init_weights",
]
