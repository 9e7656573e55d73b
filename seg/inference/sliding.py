"""Sliding-window inference: the model run over windows of its training size at the image's own
resolution, so structures a few pixels wide survive on images much larger than the training inputs
(resizing a 512x512 slice to a 64x64 crop size would erase them).

As in nnU-Net and MONAI: windows overlap (0.5 by default), each window's probabilities are weighted
by a Gaussian (sigma = window/8) that trusts a window's centre more than its edges, where the model
saw least context, and the sum is divided by the summed weights, so a model that predicts a constant
gives exactly that constant. As in the U-Net paper's overlap-tile strategy, the image is mirrored
at its borders by a margin first, so its own border pixels lie inside windows rather than on their
edges; images smaller than a window are mirrored up to its size.

Windows are cut from the padded image by slicing, run `batch` at a time (memory stays bounded by
the batch, not the image), and added back by slicing: no per-pixel Python work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seg.engine.amp import Amp
from seg.inference.core import FLIPS, predict_probs

SIGMA_SCALE = 1 / 8  # nnU-Net's and MONAI's default: sigma = window size / 8
MARGIN_SCALE = 1 / 4  # mirrored margin around images larger than a window, in window sizes


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows along one axis of `length` (>= window): the first at 0, the last at
    `length - window`, evenly spread with steps of `window * (1 - overlap)` or less (a pixel more where
    the two mirrored halves meet), and symmetric
    (a start s has its mirror length - window - s; a middle window of an odd count sits within half a
    pixel of the middle), so a flipped image gets (nearly) the flipped grid."""
    span = length - window
    if span <= 0:
        return [0]
    stride = max(1, int(round(window * (1 - overlap))))
    n = math.ceil(span / stride) + 1
    first_half = [i * span // (n - 1) for i in range(n // 2)]
    middle = [span // 2] if n % 2 else []
    return sorted({*first_half, *middle, *(span - s for s in first_half)})


def gaussian_weights(window: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """[h,w] weights, 1 at the window's centre, exp(-8) at the middle of its edges (never 0, so
    every covered pixel has a positive summed weight). Centred at (n-1)/2: symmetric under flips."""
    axes = []
    for n in window:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        axes.append(torch.exp(-(x**2) / (2 * (n * SIGMA_SCALE) ** 2)))
    return axes[0][:, None] * axes[1][None, :]


def _mirror_axis(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Reflect-pad one axis (-2 or -1) by any amount: F.pad's reflect needs a pad smaller than the
    axis, so a long pad is done in steps (mirror of the mirror: the image tiled by reflection)."""
    while before > 0 or after > 0:
        n = x.shape[dim]
        if n == 1:  # nothing to reflect: repeat the single row/column
            pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
            return F.pad(x, pad, mode="replicate")
        b, a = min(before, n - 1), min(after, n - 1)
        x = F.pad(x, (b, a, 0, 0) if dim == -1 else (0, 0, b, a), mode="reflect")
        before, after = before - b, after - a
    return x


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """[B,C,H,W] mirrored at its borders by the given amounts (any size, even 1 pixel)."""
    return _mirror_axis(_mirror_axis(x, top, bottom, -2), left, right, -1)


def border_pads(length: int, window: int, margin: int) -> tuple[int, int]:
    """Padding (before, after) of one axis. An image that fits one window is only padded up to it,
    split evenly: at the training size that is no padding, one window, and the result equals resize
    mode's (the model ran on such images, borders included, in training). A larger image gets
    `margin` on each side: its border pixels then get context instead of a window's edge."""
    if length <= window:
        extra = window - length
        return extra // 2, extra - extra // 2
    return margin, margin


@torch.no_grad()
def slide_probs(model: torch.nn.Module, image: torch.Tensor, amp: Amp, *, window: tuple[int, int],
                overlap: float = 0.5, batch: int = 8, tta: bool = False, margin: tuple[int, int] | None = None,
                channels_last: bool = False) -> torch.Tensor:
    """Class probabilities [B,K,H,W] (K=1: foreground, by sigmoid) for images [B,C,H,W] in [0,1]
    (any H, W), from windows of `window` = (h, w). `margin`: the mirrored border, default a quarter
    window. `tta` averages the whole sliding pass over the four flips (flip, slide, flip back): a
    group average, so the result is flip-equivariant whatever the window grid."""
    wh, ww = (int(s) for s in window)
    if wh < 1 or ww < 1 or not 0 <= overlap < 1 or batch < 1:
        raise ValueError(f"slide_probs: window {window}, overlap {overlap}, batch {batch} out of range")
    margin = margin or (int(wh * MARGIN_SCALE), int(ww * MARGIN_SCALE))
    settings = ((wh, ww), overlap, batch, margin, channels_last)
    if not tta:
        return _slide(model, image, amp, *settings)
    total = None
    for dims in FLIPS:
        probs = _slide(model, image.flip(dims) if dims else image, amp, *settings)
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(FLIPS)


def _slide(model: torch.nn.Module, image: torch.Tensor, amp: Amp, window: tuple[int, int], overlap: float,
           batch: int, margin: tuple[int, int], channels_last: bool) -> torch.Tensor:
    n_images, _, height, width = image.shape
    (wh, ww), device = window, image.device
    top, bottom = border_pads(height, wh, margin[0])
    left, right = border_pads(width, ww, margin[1])
    padded = mirror_pad(image, top, bottom, left, right)
    ph, pw = padded.shape[-2:]
    # The grid is the same for every image of the batch: positions and summed weights once.
    positions = [(y, x) for y in window_starts(ph, wh, overlap) for x in window_starts(pw, ww, overlap)]
    weights = gaussian_weights(window, device)
    norm = torch.zeros(ph, pw, device=device)
    for y, x in positions:
        norm[y : y + wh, x : x + ww] += weights
    tiles = [(b, y, x) for b in range(n_images) for y, x in positions]
    total: torch.Tensor | None = None
    for start in range(0, len(tiles), batch):
        part = tiles[start : start + batch]
        crops = torch.stack([padded[b, :, y : y + wh, x : x + ww] for b, y, x in part])
        if channels_last:  # the layout the model was trained and loaded in
            crops = crops.contiguous(memory_format=torch.channels_last)
        probs = predict_probs(model, crops, amp) * weights
        if total is None:
            total = torch.zeros(n_images, probs.shape[1], ph, pw, device=device)
        for (b, y, x), p in zip(part, probs):
            total[b, :, y : y + wh, x : x + ww] += p
    assert total is not None  # at least one window per image
    return (total / norm)[:, :, top : top + height, left : left + width]
