"""Overlay images: the prediction drawn on the input next to the ground truth.

Binary: true positives green, false positives red, false negatives orange (as in the CT chapter), so
missed lesion and false alarm read at a glance. Multi-class: one colour per class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seg.constants import IGNORE_INDEX

TP_GREEN = (0.0, 0.85, 0.0)
FP_RED = (1.0, 0.0, 0.0)
FN_ORANGE = (1.0, 0.6, 0.0)
TRUTH_BLUE = (0.1, 0.55, 1.0)  # binary ground truth: a colour none of TP/FP/FN uses
PALETTE = (
    (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
)  # fmt: skip


def to_display(image: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] input -> [B,3,H,W] in [0,1]: RGB as is, one channel as grey, context stacks (CT) by
    their centre channel; values outside [0,1] (HU, standardised) are min-max scaled per image."""
    image = image.detach().float()
    c = image.shape[1]
    x = image if c == 3 else image[:, c // 2 : c // 2 + 1].expand(-1, 3, -1, -1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    outside = (lo < 0) | (hi > 1)
    scaled = (x - lo) / (hi - lo).clamp_min(1e-6)
    return torch.where(outside, scaled, x).clamp(0, 1)


def _paint(display: torch.Tensor, where: torch.Tensor, colour: tuple[float, ...], alpha: float) -> torch.Tensor:
    rgb = torch.tensor(colour, dtype=display.dtype, device=display.device).view(1, 3, 1, 1)
    w = where.unsqueeze(1).to(display.dtype) * alpha
    return display * (1 - w) + rgb * w


def binary_overlay(display: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """TP/FP/FN colouring of a binary prediction; pixels marked ignore are left uncoloured."""
    valid = target != IGNORE_INDEX
    pred, truth = pred.bool() & valid, (target == 1) & valid
    out = _paint(display, pred & truth, TP_GREEN, alpha)
    out = _paint(out, pred & ~truth, FP_RED, alpha)
    return _paint(out, ~pred & truth, FN_ORANGE, alpha)


def class_overlay(display: torch.Tensor, labels: torch.Tensor, n_classes: int, alpha: float = 0.45) -> torch.Tensor:
    """One colour per class id; for binary maps only the foreground (1) is coloured, in blue."""
    if n_classes == 1:
        return _paint(display, labels == 1, TRUTH_BLUE, alpha)
    out = display
    for k in range(n_classes):
        out = _paint(out, labels == k, PALETTE[k % len(PALETTE)], alpha)
    return out


def overlay_panels(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[B,3,H,2W+2]: the prediction on the input (left) and the ground truth on the input (right)."""
    display = to_display(image)
    target = target.to(display.device)
    pred = pred.to(display.device)
    left = binary_overlay(display, pred, target) if n_classes == 1 else class_overlay(display, pred, n_classes)
    right = class_overlay(display, target, n_classes)
    gap = torch.ones_like(display[..., :2])
    return torch.cat([left, gap, right], dim=-1)


def save_png(panel: torch.Tensor, path: str | Path) -> None:
    """[3,H,W] float in [0,1] -> 8-bit PNG."""
    array = (panel.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
