"""SegNet as in the PH2 skin-lesion notebook: a plain encoder-decoder without skip connections."""

from __future__ import annotations

import torch
from torch import nn

from seg.models.layers import ConvNormAct, pad_to_multiple, require_positive_int, unpad

N_STAGES = 4


class SegNet(nn.Module):
    """4 x (conv3x3 -> ReLU -> BN -> max-pool), a bottleneck conv, 4 x (bilinear x2 -> conv3x3 -> ReLU
    -> BN), 1x1 head. Channels base*(1,2,4,8), bottleneck base*16; base 16 is the notebook's net.

    Four poolings need H,W divisible by 16: other sizes are reflect-padded and the logits cropped back.
    """

    def __init__(self, *, in_channels: int, n_classes: int, base_channels: int = 16) -> None:
        super().__init__()
        require_positive_int("SegNet", "in_channels", in_channels)
        require_positive_int("SegNet", "n_classes", n_classes)
        require_positive_int("SegNet", "base_channels", base_channels)
        widths = [base_channels * 2**i for i in range(N_STAGES)]  # 16, 32, 64, 128
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(ConvNormAct(c_in, c_out, act_first=True), nn.MaxPool2d(2))
                for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
            )
        )
        bottleneck = base_channels * 2**N_STAGES  # 256
        self.bottleneck = ConvNormAct(widths[-1], bottleneck, act_first=True)
        dec_widths = widths[::-1]  # 128, 64, 32, 16
        self.decoder = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    ConvNormAct(c_in, c_out, act_first=True),
                )
                for c_in, c_out in zip([bottleneck, *dec_widths[:-1]], dec_widths)
            )
        )
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, 2**N_STAGES)  # [B,C,H',W'], H',W' multiples of 16
        x = self.encoder(x)  # [B,8*base,H'/16,W'/16]
        x = self.bottleneck(x)  # [B,16*base,H'/16,W'/16]
        x = self.decoder(x)  # [B,base,H',W']
        return unpad(self.head(x), pads)  # [B,n_classes,H,W]
