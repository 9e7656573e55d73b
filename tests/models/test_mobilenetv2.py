"""MobileNetV2 encoder: torchvision's exact key set and shapes, skip taps and their strides."""

from __future__ import annotations

import torch

from seg.models.mobilenetv2 import MobileNetV2Encoder, make_divisible

# torchvision mobilenet_v2().features[1..17]: (in, hidden, out, stride), written out by hand.
BLOCKS = [
    (32, 32, 16, 1),
    (16, 96, 24, 2), (24, 144, 24, 1),
    (24, 144, 32, 2), (32, 192, 32, 1), (32, 192, 32, 1),
    (32, 192, 64, 2), (64, 384, 64, 1), (64, 384, 64, 1), (64, 384, 64, 1),
    (64, 384, 96, 1), (96, 576, 96, 1), (96, 576, 96, 1),
    (96, 576, 160, 2), (160, 960, 160, 1), (160, 960, 160, 1),
    (160, 960, 320, 1),
]  # fmt: skip


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    stats = {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}
    return {f"{prefix}.{k}": v for k, v in stats.items()}


def _torchvision_features_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    for i, (c_in, hidden, c_out, _) in enumerate(BLOCKS, start=1):
        p = f"features.{i}.conv"
        if i == 1:  # expansion 1: depthwise, projection, BN
            shapes |= {f"{p}.0.0.weight": (32, 1, 3, 3), **_bn(f"{p}.0.1", 32), f"{p}.1.weight": (16, 32, 1, 1)}
            shapes |= _bn(f"{p}.2", 16)
            continue
        shapes |= {f"{p}.0.0.weight": (hidden, c_in, 1, 1), **_bn(f"{p}.0.1", hidden)}
        shapes |= {f"{p}.1.0.weight": (hidden, 1, 3, 3), **_bn(f"{p}.1.1", hidden)}
        shapes |= {f"{p}.2.weight": (c_out, hidden, 1, 1), **_bn(f"{p}.3", c_out)}
    return shapes | {"features.18.0.weight": (1280, 320, 1, 1), **_bn("features.18.1", 1280)}


def test_state_dict_matches_torchvision_key_set_and_shapes() -> None:
    state = MobileNetV2Encoder().state_dict()
    expected = _torchvision_features_shapes()
    # 6 (stem) + 12 (block 1) + 16 x 18 (expanding blocks) + 6 (1280 conv) = 312 entries
    assert len(state) == len(expected) == 312
    assert list(state) == list(expected)  # same order too, as torchvision registers them
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_parameter_count_is_torchvision_features() -> None:
    encoder = MobileNetV2Encoder()
    params = list(encoder.parameters())
    assert len(params) == 156
    # torchvision mobilenet_v2: 3,504,872 parameters, minus the 1280x1000 (+1000) classifier
    assert sum(p.numel() for p in params) == 3_504_872 - 1_281_000


def test_block_strides_and_residuals() -> None:
    encoder = MobileNetV2Encoder()
    for i, (c_in, _, c_out, stride) in enumerate(BLOCKS, start=1):
        block = encoder.features[i]
        assert block.conv[-3 if i > 1 else 0][0].stride == (stride, stride)
        assert block.use_res_connect == (stride == 1 and c_in == c_out)


def test_skips_have_keras_tap_strides_and_channels() -> None:
    encoder = MobileNetV2Encoder().eval()
    skips = encoder(torch.rand(2, 3, 64, 96))
    assert [tuple(s.shape[1:]) for s in skips] == [
        (96, 32, 48),  # block_1_expand_relu, stride 2
        (144, 16, 24),  # block_3_expand_relu, stride 4
        (192, 8, 12),  # block_6_expand_relu, stride 8
        (576, 4, 6),  # block_13_expand_relu, stride 16
        (320, 2, 3),  # block_16_project, stride 32
    ]
    assert encoder.skip_channels == (96, 144, 192, 576, 320)


def test_taps_are_the_expansion_relu6_outputs() -> None:
    torch.manual_seed(0)
    encoder = MobileNetV2Encoder().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        skips = encoder(x)
        f = encoder.features
        before_2 = f[1](f[0](x))
        assert torch.allclose(skips[0], f[2].conv[0](before_2))
        assert torch.allclose(skips[2], f[7].conv[0](f[6](f[5](f[4](f[3](f[2](before_2)))))), atol=1e-5)
        assert torch.allclose(skips[4], f[:18](x), atol=1e-5)
    assert all(float(s.min()) >= 0.0 and float(s.max()) <= 6.0 for s in skips[:4])  # ReLU6 range


def test_width_multiplier_rounds_to_multiples_of_eight() -> None:
    assert [make_divisible(v) for v in (16.0, 12.0, 4.0, 1280.0, 36.0)] == [16, 16, 8, 1280, 40]
    encoder = MobileNetV2Encoder(width_mult=0.5).eval()
    assert encoder.features[0][0].out_channels == 16
    assert encoder.features[18][0].out_channels == 1280  # never below 1280
    assert all(s.shape[1] == c for s, c in zip(encoder(torch.rand(1, 3, 32, 32)), encoder.skip_channels))
