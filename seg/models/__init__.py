"""Segmentation models: every one maps [B,in_channels,H,W] floats to logits [B,n_classes,H,W]."""

from __future__ import annotations

from typing import Any

from torch import nn

from seg.errors import ConfigError
from seg.models.init import SCHEMES, init_weights
from seg.models.mobilenet_unet import MobileNetUNet
from seg.models.segnet import SegNet
from seg.models.unet import UNet, UNetWrapper

MODELS: dict[str, type[nn.Module]] = {
    "segnet": SegNet,
    "unet": UNet,
    "unet_wrapper": UNetWrapper,
    "mobilenet_unet": MobileNetUNet,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registry name (configs use `_target_`; this serves scripts and tests)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: expected one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "SCHEMES",
    "MobileNetUNet",
    "SegNet",
    "UNet",
    "UNetWrapper",
    "build_model",
    "init_weights",
]
