"""U-Net (Ronneberger et al.) with configurable depth and width, and the LUNA book's input-normalising
wrapper around it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seg.errors import ConfigError
from seg.models.layers import UP_MODES, DoubleConv, UNetUp, pad_to_multiple, require_positive_int, unpad


class UNet(nn.Module):
    """Level i has 2**(wf+i) filters (depth 5, wf 6: the classic 64..1024 net; depth 3, wf 4: the
    small CT net). `up_mode` "upconv" = 2x2 transposed conv, "upsample" = bilinear x2 + 1x1 conv.

    padding=True: same-size 3x3 convs; inputs whose H,W are not multiples of 2**(depth-1) are padded
    and the logits cropped back, so output H,W == input H,W.
    padding=False: valid convs as in the paper; each level loses 4 px per side length, skips are
    center-cropped, and the output is the *center* of the input, `output_size(n)` px wide (e.g. 572 ->
    388 for depth 5). Targets must then be center-cropped by the caller.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        n_classes: int,
        depth: int = 5,
        wf: int = 6,
        padding: bool = True,
        batch_norm: bool = False,
        up_mode: str = "upconv",
    ) -> None:
        super().__init__()
        require_positive_int("UNet", "in_channels", in_channels)
        require_positive_int("UNet", "n_classes", n_classes)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"UNet: depth must be an integer >= 1 (number of levels, e.g. 3, 4 or 5), got {depth!r}")
        if isinstance(wf, bool) or not isinstance(wf, int) or wf < 0:
            raise ConfigError(f"UNet: wf must be an integer >= 0 (first level has 2**wf filters), got {wf!r}")
        if up_mode not in UP_MODES:
            raise ConfigError(f"UNet: up_mode must be one of {list(UP_MODES)}, got {up_mode!r}")
        self.depth, self.padding = depth, bool(padding)
        widths = [2 ** (wf + i) for i in range(depth)]
        self.down_path = nn.ModuleList(
            DoubleConv(c_in, c_out, padding=self.padding, batch_norm=batch_norm)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.up_path = nn.ModuleList(
            UNetUp(widths[i + 1], widths[i], widths[i], up_mode=up_mode, padding=self.padding, batch_norm=batch_norm)
            for i in reversed(range(depth - 1))
        )
        self.pool = nn.MaxPool2d(2)
        self.last = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def output_size(self, size: int) -> int:
        """Output side length for an input side length (identity when padding=True)."""
        if self.padding:
            return size
        n = size
        for level in range(self.depth):
            n -= 4
            if n < 1:
                return 0
            if level < self.depth - 1:
                n //= 2
        for _ in range(self.depth - 1):
            n = 2 * n - 4
        return max(n, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pads = (0, 0, 0, 0)
        if self.padding:
            x, pads = pad_to_multiple(x, 2 ** (self.depth - 1))
        elif min(self.output_size(h), self.output_size(w)) < 1:
            smallest = next(n for n in range(1, 4096) if self.output_size(n) >= 1)
            raise ConfigError(
                f"UNet(padding=False, depth={self.depth}) needs inputs of at least {smallest}x{smallest} "
                f"px, got {h}x{w}: use a larger image size or padding=True"
            )
        skips = []
        for level, block in enumerate(self.down_path):
            x = block(x)  # [B,2**(wf+level),h_l,w_l]
            if level < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, skip in zip(self.up_path, reversed(skips)):
            x = up(x, skip)  # [B,channels of skip,2h,2w]
        return unpad(self.last(x), pads)  # [B,n_classes,H,W] (smaller with padding=False)


class UNetWrapper(nn.Module):
    """A BatchNorm2d on the raw input in front of a UNet, so inputs in any units (CT in HU) need no
    hand-tuned normalisation. Returns logits; the book's final sigmoid belongs to the loss/metrics."""

    def __init__(self, *, in_channels: int, **unet_kwargs: Any) -> None:
        """`unet_kwargs`: UNet's other arguments (n_classes, depth, ...), passed on as they are."""
        super().__init__()
        self.unet = UNet(in_channels=in_channels, **unet_kwargs)  # first: it checks in_channels
        self.input_batchnorm = nn.BatchNorm2d(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(self.input_batchnorm(x))
