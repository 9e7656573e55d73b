"""MobileNetV2 encoder whose module tree (and so state-dict keys) is torchvision's
`mobilenet_v2().features`, so the published ImageNet weights load without torchvision installed.

Keys: features.0.0.weight (stem conv), features.1.conv.0.0.weight, ..., features.18.0.weight.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Mapping
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from seg.errors import CheckpointError, ConfigError

IMAGENET_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (expansion t, output channels c, repeats n, first stride s) per stage, from the MobileNetV2 paper.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Skip taps (Keras names): the expansion ReLU6 of features[i] for i in EXPAND_TAPS (block_1, block_3,
# block_6, block_13 -> strides 2, 4, 8, 16), then the output of features[17] (block_16_project, 32).
EXPAND_TAPS = (2, 4, 7, 14)
LAST_TAP = 17


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class Conv2dNormActivation(nn.Sequential):
    """Conv2d(no bias) -> BatchNorm2d -> ReLU6, named 0/1/2 like torchvision's."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t=1) -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(in_channels, hidden, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.hidden_channels = hidden
        self.expands = expand_ratio != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tap(x)[0]

    def forward_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, expansion activation) in one pass; the tap is the input for t=1 blocks."""
        tap = self.conv[0](x) if self.expands else x
        y = tap
        for layer in islice(self.conv, 1 if self.expands else 0, None):
            y = layer(y)
        return (x + y if self.use_res_connect else y), tap


class MobileNetV2Encoder(nn.Module):
    """`features` is torchvision's 19-module Sequential. Only features[0..17] run: the U-Net taps stop
    at stride 32, and the 1280-channel features[18] is kept (frozen) only so the key set matches."""

    def __init__(self, *, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError(f"MobileNetV2: width_mult must be > 0 (1.0 = the ImageNet model), got {width_mult!r}")
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, channels, stride=2)]
        for t, c, n, s in STAGES:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, stride=s if i == 0 else 1, expand_ratio=t))
                channels = out
        layers.append(Conv2dNormActivation(channels, make_divisible(1280 * max(1.0, width_mult)), kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.features[18].requires_grad_(False)
        taps = [self.features[i].hidden_channels for i in EXPAND_TAPS]
        self.skip_channels: tuple[int, ...] = (*taps, channels)  # 96, 144, 192, 576, 320 at width 1.0
        self._init_like_torchvision()

    def _init_like_torchvision(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Skip features at strides 2, 4, 8, 16, 32 (channels `skip_channels`)."""
        skips = []
        for i in range(LAST_TAP + 1):
            block = self.features[i]
            if i in EXPAND_TAPS:
                x, tap = block.forward_tap(x)
                skips.append(tap)
            else:
                x = block(x)
        skips.append(x)
        return skips


def fetch_imagenet_state_dict() -> Mapping[str, torch.Tensor]:
    """Download once into torch.hub's cache (TORCH_HOME); the hash in the file name is checked."""
    try:
        return torch.hub.load_state_dict_from_url(IMAGENET_URL, map_location="cpu", progress=False, check_hash=True)
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(
            f"pretrained=imagenet needs to download {IMAGENET_URL} but that failed ({err}); download the "
            "file on a machine with network access and pass its path instead: pretrained=/path/to/"
            "mobilenet_v2-b0353104.pth"
        ) from err
    except RuntimeError as err:
        raise CheckpointError(
            f"the downloaded ImageNet weights ({IMAGENET_URL}) are damaged ({err}); delete the cached "
            "copy under torch.hub.get_dir()/checkpoints and retry"
        ) from err


def read_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(
            f"pretrained={str(path)!r} is neither 'imagenet' nor an existing file; expected the path of a "
            "MobileNetV2 state_dict (.pth) such as torchvision's mobilenet_v2-b0353104.pth"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors vary by cause; all mean "not a readable weights file"
        # One line and never torch's advice to load unsafely: the cause's type is enough to act on.
        raise CheckpointError(
            f"cannot read pretrained weights {file} ({type(err).__name__}); expected a torch.save'd state_dict "
            "of a MobileNetV2, such as torchvision's mobilenet_v2-b0353104.pth"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} holds a {type(state).__name__}, expected a state_dict of tensors")
    return state


def _features_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept the full torchvision model (features.* + classifier.*) or `.features` alone."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    return dict(state)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem conv -> `in_channels` inputs: every channel gets mean_RGB * 3/in_channels (= the RGB
    sum for one channel), so a gray image gives the same stem response as its RGB replica."""
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def load_encoder_weights(encoder: MobileNetV2Encoder, source: str) -> None:
    """Load ImageNet weights into the encoder, adapting the stem to the input channel count."""
    state = _features_only(fetch_imagenet_state_dict() if source == "imagenet" else read_state_dict(source))
    own = encoder.features.state_dict()
    stem = "0.0.weight"
    in_channels = own[stem].shape[1]
    if stem in state and state[stem].ndim == 4 and state[stem].shape[1] == 3 and in_channels != 3:
        state[stem] = adapt_stem(state[stem], in_channels)
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = [f"features.{k}" for k in own if k not in state and k not in optional]
    unexpected = [f"features.{k}" for k in state if k not in own]
    wrong = [
        f"features.{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"missing keys: {_listing(missing)}" if missing else "",
            f"unexpected keys: {_listing(unexpected)}" if unexpected else "",
            f"shape mismatches: {_listing(wrong)}" if wrong else "",
        ]
        raise CheckpointError(
            f"pretrained={source!r} does not fit the MobileNetV2 encoder ("
            + "; ".join(p for p in parts if p)
            + "); expected torchvision mobilenet_v2 weights (width_mult=1.0), full model or `.features` alone"
        )
    own.update({k: v.to(own[k].dtype) for k, v in state.items()})
    encoder.features.load_state_dict(own)
