"""SegNet: notebook architecture, any input size, logits out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg.errors import ConfigError
from seg.models import SegNet


@pytest.mark.parametrize(
    ("in_channels", "n_classes", "shape"),
    [(3, 1, (64, 64)), (1, 3, (100, 100)), (7, 1, (37, 53)), (3, 3, (48, 20))],
)
def test_output_has_input_size_and_class_channels(in_channels: int, n_classes: int, shape: tuple[int, int]) -> None:
    model = SegNet(in_channels=in_channels, n_classes=n_classes, base_channels=4)
    out = model(torch.rand(2, in_channels, *shape))
    assert out.shape == (2, n_classes, *shape)
    assert torch.isfinite(out).all()


def test_notebook_layout_and_parameter_count() -> None:
    model = SegNet(in_channels=3, n_classes=1)
    enc = [stage[0][0].out_channels for stage in model.encoder]
    dec = [stage[1][0].out_channels for stage in model.decoder]
    assert enc == [16, 32, 64, 128] and dec == [128, 64, 32, 16]
    assert model.bottleneck[0].out_channels == 256
    assert [type(m) for m in model.encoder[0][0]] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    assert isinstance(model.encoder[0][1], nn.MaxPool2d)
    assert model.decoder[0][0].mode == "bilinear"
    # conv (9*cin+1)*cout + BN 2*cout per block, then the 1x1 head (16+1)*1
    chans = [(3, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 128), (128, 64), (64, 32), (32, 16)]
    expected = sum((9 * a + 1) * b + 2 * b for a, b in chans) + 17
    assert sum(p.numel() for p in model.parameters()) == expected


def test_odd_input_is_reflect_padded_symmetrically_and_cropped_back() -> None:
    model = SegNet(in_channels=1, n_classes=1, base_channels=4).eval()
    x = torch.rand(1, 1, 37, 53)
    padded = F.pad(x, (5, 6, 5, 6), mode="reflect")  # 48x64, the next multiples of 16
    expected = model(padded)[..., 5:42, 5:58]
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_backward_reaches_every_parameter() -> None:
    model = SegNet(in_channels=3, n_classes=2, base_channels=4)
    model(torch.rand(2, 3, 32, 32)).logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="base_channels"):
        SegNet(in_channels=3, n_classes=1, base_channels=0)
    with pytest.raises(ConfigError, match="n_classes"):
        SegNet(in_channels=3, n_classes=0)
