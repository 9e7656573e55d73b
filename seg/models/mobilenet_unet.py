"""U-Net with an (optionally ImageNet-pretrained, optionally frozen) MobileNetV2 encoder, after the
Oxford-Pets tutorial: skips at strides 2..32, pix2pix-style transposed-conv decoder."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from seg.errors import ConfigError
from seg.models.layers import TransposeUp, pad_to_multiple, require_positive_int, unpad
from seg.models.mobilenetv2 import IMAGENET_MEAN, IMAGENET_STD, MobileNetV2Encoder, load_encoder_weights

ENCODER_STRIDE = 32


class MobileNetUNet(nn.Module):
    """MobileNetV2 skips (strides 2, 4, 8, 16, 32) -> 4 x (TransposeUp, concat skip) -> 3x3
    transposed conv stride 2 to n_classes logits at full resolution.

    pretrained: None (random init), "imagenet" (download/cache torchvision's weights) or a path to a
    state_dict of torchvision's mobilenet_v2 (full, classifier ignored) or of its `.features`.
    With pretrained weights the input (expected in [0,1]) is ImageNet-normalised inside forward; the
    mean/std are buffers, so a checkpoint carries them and the model rebuilt with pretrained=None
    behaves the same once the checkpoint is loaded. H,W not divisible by 32 are padded, then cropped.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        n_classes: int,
        pretrained: str | None = None,
        freeze_encoder: bool = False,
        unfreeze_after: int | None = None,
        decoder_channels: Sequence[int] = (512, 256, 128, 64),
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        require_positive_int("MobileNetUNet", "in_channels", in_channels)
        require_positive_int("MobileNetUNet", "n_classes", n_classes)
        decoder = [int(c) for c in decoder_channels]
        if len(decoder) != 4 or min(decoder) < 1:
            raise ConfigError(
                f"MobileNetUNet: decoder_channels must be 4 positive widths (one per upsampling from "
                f"stride 32 to 2, e.g. [512, 256, 128, 64]), got {list(decoder_channels)!r}"
            )
        self.encoder = MobileNetV2Encoder(in_channels=in_channels, width_mult=float(width_mult))
        self.pretrained = pretrained is not None
        mean, std = torch.zeros(in_channels), torch.ones(in_channels)  # identity until weights load
        if self.pretrained:
            load_encoder_weights(self.encoder, str(pretrained))
            rgb = in_channels == 3
            mean = torch.tensor(IMAGENET_MEAN) if rgb else torch.full((in_channels,), sum(IMAGENET_MEAN) / 3)
            std = torch.tensor(IMAGENET_STD) if rgb else torch.full((in_channels,), sum(IMAGENET_STD) / 3)
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1))
        self.register_buffer("input_std", std.view(1, -1, 1, 1))

        *skips, deepest = self.encoder.skip_channels  # [96, 144, 192, 576], 320
        ups, channels = [], deepest
        for width, skip in zip(decoder, reversed(skips)):
            ups.append(TransposeUp(channels, width))
            channels = width + skip
        self.decoder = nn.ModuleList(ups)
        self.head = nn.ConvTranspose2d(channels, n_classes, kernel_size=3, stride=2, padding=1, output_padding=1)

        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            if not self.pretrained:
                warnings.warn(
                    "MobileNetUNet: freeze_encoder=True without pretrained weights freezes a random encoder",
                    stacklevel=2,
                )
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        if unfreeze_after is not None and (isinstance(unfreeze_after, bool) or not isinstance(unfreeze_after, int)
                                           or unfreeze_after < 1 or not self.freeze_encoder):
            raise ConfigError(f"MobileNetUNet: unfreeze_after={unfreeze_after!r} must be a number of epochs >= 1 "
                              "that the encoder stays frozen (with freeze_encoder=true), or null")
        self.unfreeze_after = unfreeze_after

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """What the optimizer holds: the trainable parameters, and the frozen encoder's too when it is
        unfrozen later (without gradients until then, the optimizer leaves them as they are)."""
        later = self.unfreeze_after is not None
        return [p for name, p in self.named_parameters() if p.requires_grad or (later and self._unfreezes(name))]

    def _unfreezes(self, name: str) -> bool:
        return name.startswith("encoder.") and not name.startswith("encoder.features.18.")  # 18: never used

    def on_train_epoch(self, epoch: int) -> None:
        """Before each training epoch: past `unfreeze_after` epochs the encoder trains too (its BatchNorm
        statistics with it). A function of the epoch alone, so a resumed run unfreezes where it would have."""
        if self.unfreeze_after is None or not self.freeze_encoder or epoch <= self.unfreeze_after:
            return
        for name, p in self.named_parameters():
            if self._unfreezes(name):
                p.requires_grad_(True)
        self.freeze_encoder = False
        self.train(self.training)

    def pretrained_modules(self) -> list[nn.Module]:
        """Modules whose loaded weights `init_weights` must not overwrite."""
        return [self.encoder] if self.pretrained else []

    def train(self, mode: bool = True) -> MobileNetUNet:
        """A frozen encoder keeps its BatchNorm running statistics: it stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) / self.input_std
        x, pads = pad_to_multiple(x, ENCODER_STRIDE)  # [B,C,H',W'], multiples of 32
        *skips, x = self.encoder(x)  # skips at H'/2../16; x [B,320,H'/32,W'/32]
        for up, skip in zip(self.decoder, reversed(skips)):
            x = torch.cat([up(x), skip], dim=1)  # [B,width+skip,2h,2w]
        return unpad(self.head(x), pads)  # [B,n_classes,H,W]
