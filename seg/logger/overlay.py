"""Overlay images: the prediction drawn on the input next to the ground truth, plus a legend.

Binary: true positives green, false positives red, false negatives orange (as in the CT chapter), so
missed lesion and false alarm read at a glance; the ground truth is blue. Multi-class: one colour per
class from CLASS_PALETTE, which avoids those four so a class is never mistaken for an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from seg.constants import IGNORE_INDEX

TP_GREEN = (0.0, 0.85, 0.0)
FP_RED = (1.0, 0.0, 0.0)
FN_ORANGE = (1.0, 0.6, 0.0)
TRUTH_BLUE = (0.1, 0.55, 1.0)  # binary ground truth: a colour none of TP/FP/FN uses

# Class id -> 8-bit RGB, shared with palette PNG masks (seg-predict), so keep its name and shape. Every
# entry is >= 100 (RGB distance) from the four colours above and there are no greens, reds, oranges or
# mid blues; class 0 is black, the usual background of palette masks, which darkens in an overlay.
# More classes than entries cycle.
CLASS_PALETTE: list[tuple[int, int, int]] = [
    (0, 0, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (128, 0, 255), (255, 160, 210),
    (0, 120, 120), (128, 128, 0), (0, 0, 150), (140, 80, 30), (190, 170, 255), (150, 255, 190),
    (128, 128, 128), (245, 235, 150), (200, 80, 200), (60, 60, 60), (100, 180, 160), (90, 40, 140),
    (180, 120, 90), (120, 40, 80), (150, 0, 150), (255, 255, 255),
]  # fmt: skip

GAP = 2  # white columns between the two halves
MAX_SIDE = 4096  # upscaling stops before the long side passes this (thin strips stay bounded)


def class_colour(k: int) -> tuple[float, float, float]:
    """CLASS_PALETTE entry of class k as floats in [0,1]."""
    r, g, b = CLASS_PALETTE[k % len(CLASS_PALETTE)]
    return (r / 255, g / 255, b / 255)


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
    """One colour per class id; for binary maps only the foreground (1) is coloured, in blue. Ids outside
    0..n_classes-1 (the ignore value) stay uncoloured."""
    if n_classes == 1:
        return _paint(display, labels == 1, TRUTH_BLUE, alpha)
    lut = torch.tensor([class_colour(k) for k in range(n_classes)], dtype=display.dtype, device=display.device)
    labels = labels.long()
    known = (labels >= 0) & (labels < n_classes)
    rgb = lut[labels.clamp(0, n_classes - 1)].permute(0, 3, 1, 2)  # one table look-up, no loop over classes
    w = known.unsqueeze(1).to(display.dtype) * alpha
    return display * (1 - w) + rgb * w


def upscale_factor(height: int, width: int, min_side: int) -> int:
    """Smallest integer factor that brings the short side to min_side (1 when it already is), capped so
    the long side stays within MAX_SIDE."""
    if min_side <= 0 or min(height, width) >= min_side:
        return 1
    wanted = math.ceil(min_side / min(height, width))
    return max(1, min(wanted, MAX_SIDE // max(height, width)))


def overlay_panels(
    image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n_classes: int, min_side: int = 0
) -> torch.Tensor:
    """[B,3,kH,2kW+2]: the prediction on the input (left) and the ground truth on the input (right).
    With min_side, k is an integer upscale (see upscale_factor): the image is resized smoothly, the label
    maps by repetition (nearest neighbour), so colour edges stay one-pixel crisp; k is 1 by default."""
    display = to_display(image)
    target = target.to(display.device)
    pred = pred.to(display.device)
    k = upscale_factor(display.shape[-2], display.shape[-1], min_side)
    if k > 1:
        display = F.interpolate(display, scale_factor=k, mode="bilinear", align_corners=False).clamp(0, 1)
        pred, target = (m.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) for m in (pred, target))
    left = binary_overlay(display, pred, target) if n_classes == 1 else class_overlay(display, pred, n_classes)
    right = class_overlay(display, target, n_classes)
    gap = torch.ones_like(display[..., :GAP])
    return torch.cat([left, gap, right], dim=-1)


def legend_entries(n_classes: int, class_names: Sequence[str] | None = None) -> list[tuple[tuple[float, ...], str]]:
    """(colour, label) pairs the legend shows: the error colours for binary sets, else each class."""
    if n_classes == 1:
        name = class_names[0] if class_names else "foreground"
        return [(TP_GREEN, "true positive"), (FP_RED, "false positive"), (FN_ORANGE, "missed"),
                (TRUTH_BLUE, f"ground truth ({name})")]  # fmt: skip
    names = list(class_names) if class_names and len(class_names) == n_classes else []
    return [(class_colour(k), f"{k}: {names[k]}" if names else f"class {k}") for k in range(n_classes)]


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's built-in font: nothing to ship; FreeType builds give a scalable one, others a bitmap.
    return ImageFont.load_default()


def legend_strip(entries: Sequence[tuple[tuple[float, ...], str]], width: int) -> torch.Tensor:
    """[3,h,w] white strip, w >= width: "prediction" / "ground truth" under the two halves, then a
    swatch and label per entry, wrapped into rows. Wider than width only when one entry needs it."""
    font, pad, space = _font(), 6, 14
    line = font.getbbox("Ag")[3] + 2
    widths = [line + 4 + int(font.getlength(label)) for _, label in entries]
    width = max(width, max(widths, default=0) + 2 * pad)
    rows: list[list[int]] = [[]]
    x = pad
    for i, w in enumerate(widths):
        if rows[-1] and x + w > width - pad:  # next row
            rows.append([])
            x = pad
        rows[-1].append(i)
        x += w + space
    height = pad + line + pad + len(rows) * (line + 4) + pad
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    for centre, title in ((width // 4, "prediction"), (3 * width // 4, "ground truth")):
        draw.text((centre - font.getlength(title) / 2, pad), title, fill="black", font=font)
    y = pad + line + pad
    for row in rows:
        x = pad
        for i in row:
            colour, label = entries[i]
            fill = tuple(round(c * 255) for c in colour)
            draw.rectangle((x, y, x + line - 1, y + line - 1), fill=fill, outline=(64, 64, 64))
            draw.text((x + line + 4, y), label, fill="black", font=font)
            x += widths[i] + space
        y += line + 4
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).float() / 255


def add_legend(panels: torch.Tensor, strip: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] panels with the [3,h,w] legend below each; the narrower of the two is padded white."""
    width = max(panels.shape[-1], strip.shape[-1])
    panels = F.pad(panels, (0, width - panels.shape[-1]), value=1.0)
    strip = F.pad(strip.to(panels), (0, width - strip.shape[-1]), value=1.0)
    return torch.cat([panels, strip.unsqueeze(0).expand(panels.shape[0], -1, -1, -1)], dim=-2)


def save_png(panel: torch.Tensor, path: str | Path) -> None:
    """[3,H,W] float in [0,1] -> 8-bit PNG."""
    array = (panel.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
