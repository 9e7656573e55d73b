"""Shared blocks and the pad-then-crop helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg.errors import ConfigError
from seg.models.layers import (
    ConvNormAct,
    DoubleConv,
    TransposeUp,
    UNetUp,
    center_crop,
    pad_to_multiple,
    require_positive_int,
    unpad,
)


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (5, 3)])
def test_pad_to_multiple_then_unpad_gives_back_the_input(shape: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *shape)
    padded, pads = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert padded.shape[-2] - shape[0] < 16 and padded.shape[-1] - shape[1] < 16
    assert torch.equal(unpad(padded, pads), x)


def test_pad_is_split_evenly_and_reflects() -> None:
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6).contiguous()
    padded, pads = pad_to_multiple(x, 8)
    assert pads == (1, 1, 1, 1)
    assert padded[0, 0, 0, :].tolist() == [1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.0]  # mirrored, not zeros


def test_pad_of_input_smaller_than_pad_replicates_edge() -> None:
    x = torch.full((1, 1, 2, 2), 7.0)
    padded, _ = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (32, 32)
    assert torch.all(padded == 7.0)


def test_center_crop_takes_the_middle() -> None:
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert center_crop(x, (2, 2))[0, 0].tolist() == [[14.0, 15.0], [20.0, 21.0]]
    assert torch.equal(center_crop(x, (6, 6)), x)


def test_conv_norm_act_orders() -> None:
    assert [type(m) for m in ConvNormAct(3, 8)] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in ConvNormAct(3, 8, act_first=True)] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    assert [type(m) for m in ConvNormAct(3, 8, norm=False)] == [nn.Conv2d, nn.ReLU]
    assert ConvNormAct(3, 8, padding=False)(torch.rand(1, 3, 10, 10)).shape == (1, 8, 8, 8)


def test_double_conv_valid_loses_four_pixels() -> None:
    assert DoubleConv(1, 4, padding=False)(torch.rand(1, 1, 20, 20)).shape == (1, 4, 16, 16)
    assert DoubleConv(1, 4)(torch.rand(1, 1, 20, 20)).shape == (1, 4, 20, 20)


def test_unet_up_crops_a_larger_skip() -> None:
    up = UNetUp(8, 4, 4, up_mode="upconv", padding=False)
    out = up(torch.rand(1, 8, 6, 6), torch.rand(1, 4, 17, 17))  # up to 12, skip cropped to 12
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ConfigError, match="upconv"):
        UNetUp(8, 4, 4, up_mode="nearest")


def test_transpose_up_doubles_exactly() -> None:
    assert TransposeUp(6, 5)(torch.rand(2, 6, 3, 7)).shape == (2, 5, 6, 14)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3"])
def test_require_positive_int_names_the_argument(bad: object) -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        require_positive_int("M", "in_channels", bad)
    assert require_positive_int("M", "in_channels", 3) == 3
