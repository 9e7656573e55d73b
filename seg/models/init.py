"""Weight-initialisation schemes selectable from the config (normal/xavier/kaiming/orthogonal as in the
U-Net paper walkthrough, or PyTorch's defaults)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from seg.errors import ConfigError

_GAIN = math.sqrt(2.0)  # ReLU networks

SCHEMES: dict[str, Callable[[torch.Tensor], object] | None] = {
    "kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in", nonlinearity="relu"),
    "xavier": lambda w: nn.init.xavier_normal_(w, gain=_GAIN),
    "normal": lambda w: nn.init.normal_(w, 0.0, 0.02),
    "orthogonal": lambda w: nn.init.orthogonal_(w, gain=_GAIN),
    "default": None,
}

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str, *, skip: Iterable[nn.Module] = ()) -> nn.Module:
    """Re-initialise conv/linear weights (zero bias) and norm layers (weight 1, bias 0) in place.

    "default" keeps PyTorch's initialisation. Modules inside `skip` (a pretrained encoder, see
    `MobileNetUNet.pretrained_modules()`) are left untouched so loaded weights survive.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown weight init scheme {scheme!r}: expected one of {list(SCHEMES)}")
    fill = SCHEMES[scheme]
    if fill is None:
        return model
    kept = {id(m) for root in skip for m in root.modules()}
    for module in model.modules():
        if id(module) in kept:
            continue
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, _WEIGHTED):
            fill(weight)
        elif isinstance(module, _NORMS) and weight is not None:
            nn.init.ones_(weight)
        else:
            continue
        if bias is not None:
            nn.init.zeros_(bias)
    return model
