"""Calibration of pixel probabilities: expected calibration error over 15 equal-width bins and a
reliability diagram.

Binary models: the confidence is the foreground probability and the outcome "the pixel is foreground"
(a reliability diagram of P(foreground)). Multi-class: the confidence is the largest class probability
and the outcome "its class is the true one". Pixels that are not scored count nowhere. The raw model
probabilities are scored, before any post-processing (which changes masks, not probabilities).
ECE = sum_b (n_b / N) |mean confidence_b - observed frequency_b|.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from seg.constants import IGNORE_INDEX

N_BINS = 15


class Calibration:
    """Per-bin pixel count, confidence sum and outcome sum, accumulated on the probabilities' device
    (three bincounts per batch, no host read until `compute`)."""

    def __init__(self, n_bins: int = N_BINS, ignore_index: int = IGNORE_INDEX) -> None:
        self.n_bins, self.ignore_index = int(n_bins), int(ignore_index)
        self._sums: Tensor | None = None

    @torch.no_grad()
    def update(self, probs: Tensor, mask: Tensor) -> None:
        """probs [B,K,H,W] (K=1: foreground probability), mask [B,H,W] class ids."""
        valid = mask != self.ignore_index
        if probs.shape[1] == 1:
            confidence, outcome = probs[:, 0], mask != 0
        else:
            confidence, label = probs.max(dim=1)
            outcome = label == mask
        confidence, outcome = confidence[valid].double(), outcome[valid].double()
        # bin b holds [b/n, (b+1)/n); a probability of exactly 1 goes to the last bin
        index = (confidence * self.n_bins).long().clamp_(0, self.n_bins - 1)
        sums = torch.stack([torch.bincount(index, weights=w, minlength=self.n_bins)
                            for w in (torch.ones_like(confidence), confidence, outcome)])
        self._sums = sums if self._sums is None else self._sums + sums.to(self._sums.device)

    def compute(self) -> dict[str, Any]:
        """`ece` and the per-bin `count`, `confidence` (mean) and `frequency` (observed), empty bins null."""
        sums = np.zeros((3, self.n_bins)) if self._sums is None else self._sums.cpu().numpy()
        count, conf_sum, outcome_sum = sums
        total = count.sum()
        filled = count > 0
        confidence = np.where(filled, conf_sum / np.maximum(count, 1), np.nan)
        frequency = np.where(filled, outcome_sum / np.maximum(count, 1), np.nan)
        gaps = np.abs(confidence - frequency)[filled]
        ece = float((count[filled] / total * gaps).sum()) if total > 0 else float("nan")
        nullable = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731  JSON has no NaN
        return {"ece": ece, "n_bins": self.n_bins, "n_pixels": int(total), "count": [int(c) for c in count],
                "confidence": nullable(confidence), "frequency": nullable(frequency)}


def reliability_png(result: dict[str, Any], path: Path, title: str, size: int = 360) -> None:
    """A reliability diagram: observed frequency per confidence bin (bars) against the diagonal, with
    each bin's share of the pixels as a grey strip along the bottom. Drawn with PIL (no matplotlib)."""
    margin, plot = 40, size - 60
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    x0, y0 = margin, 20 + plot  # the plot's bottom-left corner
    n = result["n_bins"]
    width = plot / n
    shares = np.array(result["count"], dtype=np.float64) / max(sum(result["count"]), 1)
    for b, freq in enumerate(result["frequency"]):
        left = x0 + b * width
        if freq is not None:
            draw.rectangle([left + 1, y0 - freq * plot, left + width - 1, y0], fill=(70, 120, 200),
                           outline=(30, 60, 120))
        strip = 8 * min(1.0, shares[b] * n)  # a share of 1/n (uniform) fills the strip
        draw.rectangle([left + 1, y0 + 4, left + width - 1, y0 + 4 + strip], fill=(150, 150, 150))
    draw.line([x0, y0, x0 + plot, y0 - plot], fill=(200, 40, 40), width=2)  # perfect calibration
    draw.rectangle([x0, y0 - plot, x0 + plot, y0], outline="black")
    for tick in (0.0, 0.5, 1.0):
        draw.text((x0 + tick * plot - 8, y0 + 16), f"{tick:.1f}", fill="black")
        draw.text((4, y0 - tick * plot - 6), f"{tick:.1f}", fill="black")
    draw.text((x0, 4), f"{title}  ECE={result['ece']:.4f}", fill="black")
    image.save(path)
