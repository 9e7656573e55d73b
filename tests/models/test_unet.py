"""UNet and UNetWrapper: sizes, the classic parameter count, valid convs, argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg.errors import ConfigError
from seg.models import UNet, UNetWrapper


@pytest.mark.parametrize("up_mode", ["upconv", "upsample"])
@pytest.mark.parametrize(
    ("in_channels", "n_classes", "shape"),
    [(1, 1, (64, 64)), (3, 3, (100, 100)), (7, 1, (37, 53))],
)
def test_padded_output_has_input_size(in_channels: int, n_classes: int, shape: tuple[int, int], up_mode: str) -> None:
    model = UNet(in_channels=in_channels, n_classes=n_classes, depth=3, wf=2, batch_norm=True, up_mode=up_mode)
    out = model(torch.rand(2, in_channels, *shape))
    assert out.shape == (2, n_classes, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_any_depth_keeps_input_size(depth: int) -> None:
    model = UNet(in_channels=1, n_classes=2, depth=depth, wf=1)
    assert model(torch.rand(1, 1, 37, 53)).shape == (1, 2, 37, 53)


def _classic_count(c_in: int, n: int, depth: int = 5, wf: int = 6) -> int:
    """Hand count for padding, no BN, upconv: two biased 3x3 convs per level, 2x2 transposed convs."""
    w = [2 ** (wf + i) for i in range(depth)]
    total = 0
    for i in range(depth):
        total += (9 * (c_in if i == 0 else w[i - 1]) + 1) * w[i] + (9 * w[i] + 1) * w[i]
    for i in range(depth - 1):
        total += 4 * w[i + 1] * w[i] + w[i]  # up-conv
        total += (9 * 2 * w[i] + 1) * w[i] + (9 * w[i] + 1) * w[i]
    return total + (w[0] + 1) * n


def test_classic_unet_has_31_million_parameters() -> None:
    model = UNet(in_channels=1, n_classes=2, depth=5, wf=6, padding=True, batch_norm=False, up_mode="upconv")
    count = sum(p.numel() for p in model.parameters())
    assert count == 31_030_658 == _classic_count(1, 2)
    widths = [block[0][0].out_channels for block in model.down_path]
    assert widths == [64, 128, 256, 512, 1024]


def test_small_ct_unet_widths_and_batch_norm() -> None:
    model = UNet(in_channels=7, n_classes=1, depth=3, wf=4, batch_norm=True)
    assert [block[1][0].out_channels for block in model.down_path] == [16, 32, 64]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2 * (3 + 2)


def test_valid_convs_shrink_output_as_in_the_paper() -> None:
    paper = UNet(in_channels=1, n_classes=2, depth=5, wf=0, padding=False)
    assert paper.output_size(572) == 388
    # 188 is the smallest valid size at depth 5: its bottom level is 8 -> 4 px, output 4 px
    assert paper(torch.rand(1, 1, 188, 188)).shape == (1, 2, 4, 4)
    small = UNet(in_channels=1, n_classes=1, depth=3, wf=2, padding=False)
    # 60 -4-> 56 /2-> 28 -4-> 24 /2-> 12 -4-> 8 up 16 -4-> 12 up 24 -4-> 20
    assert small.output_size(60) == 20
    assert small(torch.rand(2, 1, 60, 60)).shape == (2, 1, 20, 20)


def test_valid_convs_reject_too_small_input() -> None:
    model = UNet(in_channels=1, n_classes=1, depth=3, wf=2, padding=False)
    # 44 -> 40 -> 20 -> 16 -> 8 -> 4 -> up 8 -> 4 -> up 8 -> 4 px; 43 ends at 0 px
    assert model.output_size(44) == 4 and model.output_size(43) == 0
    with pytest.raises(ConfigError, match="at least 44x44"):
        model(torch.rand(1, 1, 16, 16))


def test_padding_crop_is_centred() -> None:
    model = UNet(in_channels=1, n_classes=1, depth=3, wf=2, batch_norm=True).eval()
    x = torch.rand(1, 1, 37, 53)
    padded = F.pad(x, (1, 2, 1, 2), mode="reflect")  # 40x56, multiples of 4
    assert torch.allclose(model(x), model(padded)[..., 1:38, 1:54], atol=1e-6)


@pytest.mark.parametrize("model_cls", [UNet, UNetWrapper])
def test_backward_reaches_every_parameter(model_cls: type) -> None:
    model = model_cls(in_channels=2, n_classes=1, depth=3, wf=2, batch_norm=True, up_mode="upsample")
    model(torch.rand(2, 2, 32, 32)).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth"),
        ({"wf": -1}, "wf"),
        ({"up_mode": "deconv"}, r"\['upconv', 'upsample'\]"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_invalid_arguments_raise_config_error(kwargs: dict, match: str) -> None:
    args = {"in_channels": 1, "n_classes": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        UNet(**args)
    with pytest.raises(ConfigError, match=match):
        UNetWrapper(**args)


def test_wrapper_normalises_raw_input_units() -> None:
    """HU-scale input gives (almost) the same logits as unit-scale input: the input BatchNorm
    standardises per channel, so no manual normalisation is needed."""
    torch.manual_seed(0)
    model = UNetWrapper(in_channels=7, n_classes=1, depth=3, wf=4, batch_norm=True)
    assert isinstance(model.unet, UNet) and isinstance(model.input_batchnorm, torch.nn.BatchNorm2d)
    assert model.input_batchnorm.num_features == 7
    x = torch.rand(2, 7, 32, 32)
    out = model(x)
    out_hu = model(x * 2000.0 - 1000.0)
    assert out.shape == (2, 1, 32, 32)
    assert torch.allclose(out, out_hu, atol=1e-3)


def test_wrapper_returns_logits_not_probabilities() -> None:
    torch.manual_seed(0)
    model = UNetWrapper(in_channels=1, n_classes=1, depth=2, wf=2, batch_norm=True)
    with torch.no_grad():
        model.unet.last.bias.fill_(5.0)
    assert model(torch.rand(2, 1, 16, 16)).min() > 1.0  # a sigmoid would cap at 1
