"""Label maps with large shapes, and images derived from them, so alignment can be checked."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blob_mask(batch: int, height: int, width: int, labels: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """[B,H,W] long: background 0, a rectangle and a disc, placed differently per sample."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = torch.zeros(batch, height, width, dtype=torch.long)
    for i in range(batch):  # fixture construction only
        top, left = 4 + (3 * i) % 9, 6 + (5 * i) % 11
        mask[i, top : top + height // 3, left : left + width // 2] = labels[0]
        cy, cx, r = 2 * height // 3, width // 2 + (i % 5) - 2, min(height, width) // 5
        mask[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = labels[1]
    return mask


def one_hot_image(mask: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Float image whose channel k is 1 where the mask is k: argmax recovers the mask."""
    return F.one_hot(mask, n_classes).permute(0, 3, 1, 2).float()
