"""Geometric transforms of a whole batch that move image, mask and weight map together.

Flips and 90-degree turns are the dihedral group of the pixel grid: pure indexing, so they are exact
and cost no interpolation. Offset, scale, rotation and elastic deformation share ONE sampling grid
(an affine grid plus a displacement field), so each tensor is resampled once: image and weight
bilinear, mask nearest (labels are copied, never blended, so class ids such as 2 or 255 survive).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seg.augment.intensity import chance, gaussian_kernel1d, on_device, separable_conv, uniform
from seg.constants import IGNORE_INDEX


def sample_dihedral(
    n: int, *, hflip_p: float, vflip_p: float, rot90_p: float, square: bool, like: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random flips, then a random turn, reduced to (transpose, vflip, hflip) flags.

    With probability rot90_p a sample turns by 90, 180 or 270 degrees; a 90/270 turn swaps height and
    width, so non-square batches can only turn by 180 degrees. The flags are CPU tensors (see
    `chance`): `apply_dihedral` can skip unused flips without waiting for the device."""
    no = torch.zeros(n, dtype=torch.bool)
    h0 = chance(n, hflip_p) if hflip_p > 0 else no
    v0 = chance(n, vflip_p) if vflip_p > 0 else no
    if rot90_p > 0:
        turns = torch.randint(1, 4, (n,)) if square else torch.full((n,), 2)
        k = torch.where(chance(n, rot90_p), turns, torch.zeros_like(turns))
    else:
        k = torch.zeros(n, dtype=torch.long)
    # torch.rot90(x, k, dims=(-2, -1)) is: k=1 transpose then vflip; k=2 vflip+hflip; k=3 transpose
    # then hflip. Flips done before a transpose become the other axis' flip after it.
    transpose = k % 2 == 1
    vflip = torch.where(transpose, h0, v0) ^ ((k == 1) | (k == 2))
    hflip = torch.where(transpose, v0, h0) ^ ((k == 2) | (k == 3))
    return transpose, vflip, hflip


def apply_dihedral(x: Tensor, transpose: Tensor, vflip: Tensor, hflip: Tensor) -> Tensor:
    """x [B,...,H,W]: transpose, then flip rows, then columns, where each sample's flag says so."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    for flags, flip in ((transpose, lambda t: t.transpose(-1, -2)), (vflip, lambda t: t.flip(-2)),
                        (hflip, lambda t: t.flip(-1))):
        flags = flags.cpu()  # host flags from sample_dihedral: no device sync to decide
        if bool(flags.any()):
            x = torch.where(on_device(flags, x).view(shape), flip(x), x)
    return x


def affine_theta(
    n: int, size: tuple[int, int], *, max_offset: float, max_scale: float, max_rotation: float, like: Tensor
) -> Tensor:
    """[n,2,3] matrices for F.affine_grid (output -> input, normalised coordinates).

    Rotation is rigid in pixels also for non-square images (normalised axes have different pixel
    lengths, hence the aspect terms). Zoom z > 1 enlarges the content; offset is a fraction of the size."""
    h, w = size
    angle = uniform(n, -1.0, 1.0, like) * math.radians(max_rotation)
    zoom = uniform(n, 1.0 - max_scale, 1.0 + max_scale, like)
    shift = (torch.rand(n, 2, device=like.device) * 2.0 - 1.0) * (2.0 * max_offset)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    aspect = h / w
    row_x = torch.stack([cos, -sin * aspect, shift[:, 0]], dim=1)
    row_y = torch.stack([sin / aspect, cos, shift[:, 1]], dim=1)
    return torch.stack([row_x, row_y], dim=1)


def identity_theta(n: int, like: Tensor) -> Tensor:
    return torch.eye(2, 3, device=like.device).expand(n, 2, 3).clone()


def elastic_displacement(
    n: int, size: tuple[int, int], *, alpha: float, sigma: float, like: Tensor
) -> Tensor:
    """[n,H,W,2] smooth random displacements (x, y) in normalised units, to add to an affine grid.

    As in the U-Net paper, random vectors on a coarse grid are interpolated bicubically. The coarse
    noise is Gaussian-smoothed (length scale sigma pixels; grid spacing sigma/2 keeps it cheap) and
    rescaled to unit std, so alpha is the std of each displacement component in pixels."""
    h, w = size
    spacing = max(1.0, sigma / 2.0)
    coarse_sigma = sigma / spacing
    radius = max(1, math.ceil(3.0 * coarse_sigma))
    hc, wc = math.ceil(h / spacing) + 1, math.ceil(w / spacing) + 1
    # Noise with a margin so the 'valid' smoothing has no border effects.
    noise = torch.randn(n * 2, 1, hc + 2 * radius, wc + 2 * radius, device=like.device)
    kernel = gaussian_kernel1d(coarse_sigma, radius, device=like.device, dtype=torch.float32)
    smooth = separable_conv(noise, kernel, padding=None) / kernel.pow(2).sum()
    field = F.interpolate(smooth, size=(h, w), mode="bicubic", align_corners=True).view(n, 2, h, w)
    to_normalised = torch.tensor([2.0 / w, 2.0 / h], device=like.device).view(1, 2, 1, 1)
    return (field * alpha * to_normalised).permute(0, 2, 3, 1)


def warp(
    image: Tensor,
    mask: Tensor,
    weight: Tensor | None,
    theta: Tensor,
    displacement: Tensor | None,
    padding_mode: str,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One grid, one bilinear pass for image and weight, one nearest pass for the mask.

    Labels are shifted by +1 before sampling so that zeros padding (0) marks pixels that came from
    outside the image; those become IGNORE_INDEX instead of a made-up background. With 'border' or
    'reflection' the nearest source label is copied."""
    n, channels, h, w = image.shape
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if displacement is not None:
        grid = grid + displacement
    stacked = image if weight is None else torch.cat([image, weight.unsqueeze(1).to(image.dtype)], 1)
    moved = F.grid_sample(
        stacked, grid.to(image.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False
    )
    shifted = (mask.to(torch.float32) + 1.0).unsqueeze(1)
    labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode=padding_mode, align_corners=False)
    labels = labels.squeeze(1).round().long()
    new_mask = torch.where(labels == 0, torch.full_like(labels, IGNORE_INDEX), labels - 1).to(mask.dtype)
    new_weight = None if weight is None else moved[:, channels].to(weight.dtype)
    return moved[:, :channels], new_mask, new_weight
