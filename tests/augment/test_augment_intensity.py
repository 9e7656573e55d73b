"""Intensity ops: ranges, per-sample selection, channels treated alike."""

from __future__ import annotations

import torch

from seg.augment.intensity import add_noise, adjust_tone, blur_some, gaussian_blur, gaussian_kernel1d

ALL = torch.ones(8, dtype=torch.bool)


def _ramp(batch: int = 8, channels: int = 3) -> torch.Tensor:
    base = torch.linspace(0.1, 0.9, 24 * 24).view(1, 1, 24, 24)
    return base.expand(batch, channels, -1, -1).contiguous()


def test_brightness_shifts_each_sample_by_one_constant_within_range() -> None:
    torch.manual_seed(0)
    x = _ramp()
    out = adjust_tone(x, ALL, brightness=0.2, contrast=0.0, gamma=0.0)
    shift = out - x
    per_sample = shift[:, 0, 0, 0]
    torch.testing.assert_close(shift, per_sample.view(-1, 1, 1, 1).expand_as(shift))
    assert per_sample.abs().max() <= 0.2 and per_sample.unique().numel() == 8


def test_contrast_keeps_the_sample_mean_and_scales_spread() -> None:
    torch.manual_seed(1)
    x = _ramp()
    out = adjust_tone(x, ALL, brightness=0.0, contrast=0.5, gamma=0.0)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    ratio = out.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert torch.all((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5))
    assert ratio.std() > 0.01


def test_gamma_keeps_the_range_and_bends_the_middle() -> None:
    torch.manual_seed(2)
    x = _ramp() * 1000.0 - 300.0  # CT-like units: gamma must not assume [0,1]
    out = adjust_tone(x, ALL, brightness=0.0, contrast=0.0, gamma=0.5)
    torch.testing.assert_close(out.amin(dim=(1, 2, 3)), x.amin(dim=(1, 2, 3)), rtol=0, atol=1e-3)
    torch.testing.assert_close(out.amax(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)), rtol=0, atol=1e-3)
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 1.0


def test_unselected_samples_are_bitwise_unchanged() -> None:
    torch.manual_seed(3)
    x = torch.rand(8, 2, 16, 16)
    chosen = torch.tensor([True, False] * 4)
    out = adjust_tone(x, chosen, brightness=0.1, contrast=0.2, gamma=0.3)
    out = add_noise(out, chosen, 0.1)
    out = blur_some(out, chosen, (0.5, 1.0))
    assert torch.equal(out[~chosen], x[~chosen])
    assert not torch.isclose(out[chosen], x[chosen]).all(dim=(1, 2, 3)).any()


def test_tone_and_blur_treat_channels_alike_noise_does_not() -> None:
    torch.manual_seed(4)
    x = torch.rand(4, 1, 20, 20).expand(-1, 7, -1, -1).contiguous()
    sel = torch.ones(4, dtype=torch.bool)
    out = blur_some(adjust_tone(x, sel, brightness=0.1, contrast=0.3, gamma=0.3), sel, (0.5, 1.5))
    assert torch.equal(out, out[:, :1].expand_as(out))
    noisy = add_noise(x, sel, 0.05)
    assert not torch.equal(noisy[:, 0], noisy[:, 1])
    assert abs((noisy - x).std().item() - 0.05) < 0.005


def test_gaussian_blur_keeps_the_mean_and_smooths() -> None:
    torch.manual_seed(5)
    x = torch.rand(2, 3, 32, 32)
    out = gaussian_blur(x, 1.0)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(), x.mean(), atol=5e-3, rtol=0)
    assert out.std() < 0.6 * x.std()
    kernel = gaussian_kernel1d(1.0, 3, device=x.device, dtype=x.dtype)
    torch.testing.assert_close(kernel.sum(), torch.tensor(1.0))
    assert gaussian_blur(torch.rand(1, 1, 3, 3), 5.0).shape == (1, 1, 3, 3)  # radius capped
