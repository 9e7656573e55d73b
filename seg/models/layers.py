"""Building blocks shared by the models, plus the pad-then-crop helpers that let every model accept
any input size and still return logits at the input's H,W."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg.errors import ConfigError

UP_MODES = ("upconv", "upsample")


def require_positive_int(owner: str, name: str, value: object) -> int:
    """Constructor arguments come from YAML, so a typo must fail with the argument's name."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


class ConvNormAct(nn.Sequential):
    """Conv -> [BN] -> ReLU, or Conv -> ReLU -> [BN] with `act_first` (the SegNet notebook's order)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        padding: bool = True,
        norm: bool = True,
        act_first: bool = False,
    ) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2 if padding else 0)
        act = nn.ReLU(inplace=True)
        layers: list[nn.Module] = [conv]
        bn = [nn.BatchNorm2d(out_channels)] if norm else []
        layers += [act, *bn] if act_first else [*bn, act]
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """The U-Net level: two 3x3 conv(+BN)+ReLU; `padding=False` gives valid convs (H,W shrink by 4)."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: bool = True, batch_norm: bool = False) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, padding=padding, norm=batch_norm),
            ConvNormAct(out_channels, out_channels, padding=padding, norm=batch_norm),
        )


class UNetUp(nn.Module):
    """Upsample x2, concatenate the (center-cropped) skip, DoubleConv."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        *,
        up_mode: str = "upconv",
        padding: bool = True,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if up_mode == "upconv":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        elif up_mode == "upsample":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ConfigError(f"up_mode must be one of {list(UP_MODES)}, got {up_mode!r}")
        self.conv = DoubleConv(out_channels + skip_channels, out_channels, padding=padding, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # [B,out,2h,2w]
        skip = center_crop(skip, x.shape[-2:])  # only differs with valid (unpadded) convs
        return self.conv(torch.cat([x, skip], dim=1))


class TransposeUp(nn.Sequential):
    """pix2pix-style decoder step: 3x3 transposed conv stride 2 (exactly doubles H,W) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def center_crop(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Cut the middle `size` out of x's last two dims (no-op when they already match)."""
    h, w = x.shape[-2:]
    th, tw = size[0], size[1]  # not int(): a traced or exported graph keeps the sizes symbolic
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


Pads = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad's order


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Pads]:
    """Pad H,W up to a multiple of `multiple`, split evenly on both sides so borders stay symmetric.

    Reflection keeps image statistics at the border; inputs smaller than the pad fall back to
    replicating the edge (reflect needs pad < size).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0, 0, 0)
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, pads, mode=mode), pads


def unpad(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Undo `pad_to_multiple` on an output with the padded input's H,W."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]
