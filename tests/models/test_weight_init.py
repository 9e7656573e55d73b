"""init_weights: each scheme's statistics, biases and norms reset, skips honoured, bad names rejected."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seg.errors import ConfigError
from seg.models import SCHEMES, UNet, init_weights


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(64, 128, 3),
        nn.BatchNorm2d(128),
        nn.ConvTranspose2d(128, 64, 2, stride=2),
        nn.Linear(256, 128),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(3.0)
    return net


def _std(t: torch.Tensor) -> float:
    return float(t.detach().std())


def test_normal_scheme() -> None:
    net = init_weights(_net(), "normal")
    assert _std(net[0].weight) == pytest.approx(0.02, rel=0.05)
    assert abs(float(net[0].weight.detach().mean())) < 0.002


def test_kaiming_scheme_uses_fan_in() -> None:
    net = init_weights(_net(), "kaiming")
    assert _std(net[0].weight) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert _std(net[3].weight) == pytest.approx(math.sqrt(2 / 256), rel=0.05)


def test_xavier_scheme_has_relu_gain() -> None:
    net = init_weights(_net(), "xavier")
    assert _std(net[0].weight) == pytest.approx(math.sqrt(2) * math.sqrt(2 / (64 * 9 + 128 * 9)), rel=0.05)


def test_orthogonal_scheme_gives_scaled_orthonormal_rows() -> None:
    net = init_weights(_net(), "orthogonal")
    rows = net[0].weight.detach().reshape(128, -1)  # 128 x 576
    assert torch.allclose(rows @ rows.T, 2.0 * torch.eye(128), atol=1e-4)


@pytest.mark.parametrize("scheme", ["kaiming", "xavier", "normal", "orthogonal"])
def test_biases_zero_and_batchnorm_reset(scheme: str) -> None:
    net = init_weights(_net(), scheme)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in (net[0], net[1], net[2], net[3]))
    assert torch.equal(net[1].weight, torch.ones(128))
    assert all(float(m.weight.detach().abs().max()) < 3.0 for m in (net[0], net[2], net[3]))


def test_default_keeps_pytorch_initialisation() -> None:
    net = init_weights(_net(), "default")
    assert all(torch.all(p == 3.0) for p in net.parameters())


def test_skipped_modules_are_untouched() -> None:
    net = _net()
    init_weights(net, "kaiming", skip=[net[0], net[1]])
    assert torch.all(net[0].weight == 3.0) and torch.all(net[1].weight == 3.0)
    assert not torch.all(net[2].weight == 3.0) and torch.all(net[2].bias == 0.0)


def test_applies_to_a_whole_model_in_place() -> None:
    model = UNet(in_channels=1, n_classes=1, depth=2, wf=2, batch_norm=True)
    assert init_weights(model, "orthogonal") is model
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_unknown_scheme_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"'he'.*\['kaiming', 'xavier', 'normal', 'orthogonal', 'default'\]"):
        init_weights(_net(), "he")
    assert list(SCHEMES) == ["kaiming", "xavier", "normal", "orthogonal", "default"]
