"""Intensity changes on a whole batch, same parameters for every channel of a sample.

CT inputs carry neighbouring slices as channels; they must get the same brightness, contrast, gamma
and blur, or the network could tell the centre slice from its context by its grey levels. Noise is
the exception: it is drawn per pixel and per channel, as real acquisition noise is.

Magnitudes are absolute, in the image's own units (0.1 brightness on [0,1] images; CT in HU needs
values like 50). Which samples get an operation is drawn on the host (`chance`), so deciding what to
run never waits for the GPU; the magnitudes come from torch's global RNG on the batch's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def uniform(n: int, low: float, high: float, like: Tensor) -> Tensor:
    """n draws in [low, high) on the batch's device, in float32 whatever the image precision."""
    return low + (high - low) * torch.rand(n, device=like.device, dtype=torch.float32)


def chance(n: int, p: float) -> Tensor:
    """Per-sample yes/no draws as a CPU bool tensor: branching on them costs no device sync."""
    return torch.rand(n) < p


def on_device(flags: Tensor, like: Tensor) -> Tensor:
    return flags.to(like.device, non_blocking=True)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def gaussian_kernel1d(sigma: float, radius: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised (sums to 1) so smoothing keeps the mean level."""
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def separable_conv(x: Tensor, kernel: Tensor, padding: str | None) -> Tensor:
    """Depthwise 2D filtering of [N,C,H,W] with one 1D kernel along rows then columns.

    padding=None gives a 'valid' result (smaller by the kernel width); otherwise an F.pad mode."""
    channels = x.shape[1]
    radius = kernel.numel() // 2
    if padding is not None:
        x = F.pad(x, (radius, radius, radius, radius), mode=padding)
    row = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    col = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = F.conv2d(x, row, groups=channels)
    return F.conv2d(x, col, groups=channels)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Mirror-padded so edges are not darkened; the radius is capped for tiny images."""
    radius = max(1, min(math.ceil(3.0 * sigma), x.shape[-2] - 1, x.shape[-1] - 1))
    kernel = gaussian_kernel1d(sigma, radius, device=x.device, dtype=x.dtype)
    return separable_conv(x, kernel, padding="reflect")


def adjust_tone(
    x: Tensor, selected: Tensor, *, brightness: float, contrast: float, gamma: float
) -> Tensor:
    """Gamma, then contrast, then brightness, each with its own random factor per sample.

    Gamma works on intensities scaled to [0,1] by the sample's own min and max (over all channels),
    then the range is restored, so it also suits CT in HU. Contrast scales around the sample mean.
    Unselected samples come back bitwise unchanged."""
    n = x.shape[0]
    out = x
    if gamma > 0:
        log_range = math.log1p(gamma)
        g = torch.exp(uniform(n, -log_range, log_range, x))
        lo = out.amin(dim=(1, 2, 3), keepdim=True)
        span = (out.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-8)
        unit = ((out - lo) / span).clamp(0.0, 1.0)
        out = unit.pow(_per_sample(g, x)) * span + lo
    if contrast > 0:
        factor = uniform(n, 1.0 - contrast, 1.0 + contrast, x)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * _per_sample(factor, x) + mean
    if brightness > 0:
        out = out + _per_sample(uniform(n, -brightness, brightness, x), x)
    return torch.where(on_device(selected, x).view(-1, 1, 1, 1), out, x)


def add_noise(x: Tensor, selected: Tensor, std: float) -> Tensor:
    """Zero-mean Gaussian noise of a fixed absolute std on the selected samples."""
    noise = torch.randn_like(x) * std
    return x + noise * on_device(selected, x).to(x.dtype).view(-1, 1, 1, 1)


def blur_some(x: Tensor, selected: Tensor, sigma_range: tuple[float, float]) -> Tensor:
    """One sigma per batch (one kernel, one conv); only the selected samples are filtered."""
    selected = selected.cpu()  # host flags (see `chance`); a no-op for them
    if not bool(selected.any()):
        return x
    sigma = float(sigma_range[0] + (sigma_range[1] - sigma_range[0]) * torch.rand(()))
    index = on_device(selected.nonzero().squeeze(1), x)
    return x.index_copy(0, index, gaussian_blur(x.index_select(0, index), sigma))
