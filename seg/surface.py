"""Boundary-distance metrics of one predicted mask against its truth: HD95, ASSD and surface Dice.

Definitions (2D, boundaries as pixel sets):
- The boundary of a mask is its pixels with a 4-neighbour outside the mask; pixels on the image edge
  count as boundary (the mask ends there).
- Distances are Euclidean between pixel centres, in `spacing` units (mm when a reader gives the pixel
  spacing, else pixels), from scipy.ndimage.distance_transform_edt of the other boundary's complement.
- HD95: the larger of the two directed 95th percentiles (prediction -> truth, truth -> prediction),
  as MONAI's `compute_hausdorff_distance(percentile=95)`.
- ASSD: the mean of all distances of both directions pooled (sum of both sums / both counts).
- Surface Dice at tolerance t (Nikolov et al., 2021, on pixel boundaries rather than surfels): the
  fraction of both boundaries' pixels that lie within t of the other boundary.
Units: mm when the dataset gives a spacing for every image of the split (`split_spacing`), else px
for all (a mix of mm and px would average numbers of different units).
Empty masks: both empty -> "both_empty", no value (left out of every mean, counted apart); only one
empty -> "one_empty": HD95 and ASSD are inf (left out of their means, counted apart) and surface Dice
is 0 (a defined value, averaged in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbours: a diagonal step does not leave the mask
BOTH_EMPTY, ONE_EMPTY, BOTH = "both_empty", "one_empty", "both"


@dataclass(frozen=True)
class Surface:
    """One image's (one class's) values; NaN where the rules above give none."""

    hd95: float
    assd: float
    surface_dice: float
    state: str  # BOTH, ONE_EMPTY or BOTH_EMPTY


@dataclass(frozen=True)
class SplitSpacing:
    """The spacing each image of a split is measured with, and in which unit."""

    per_image: list[tuple[float, float]] | None  # (row, column) mm by item index; None: px for all
    n_spaced: int  # images the dataset gave a spacing for
    n_images: int

    @property
    def unit(self) -> str:
        return "px" if self.per_image is None else "mm"

    def of(self, index: int) -> tuple[float, float]:
        return (1.0, 1.0) if self.per_image is None else self.per_image[index]


def valid_spacing(value: Sequence[float | str] | None) -> tuple[float, float] | None:
    """(row, column) as two finite positive floats, else None: a zero or negative spacing (seen in
    the wild as a DICOM "0\\0") would make every distance 0 or undefined, so it counts as none."""
    if value is None or len(value) != 2:
        return None
    try:
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    return (row, col) if all(math.isfinite(v) and v > 0 for v in (row, col)) else None


def split_spacing(spacing_of: Callable[[int], Sequence[float] | None] | None, n_images: int) -> SplitSpacing:
    """Ask a dataset's optional `pixel_spacing(index)` for every image once, before the pass: mm only
    when all have one, as the split's means would otherwise pool mm with px."""
    if spacing_of is None:
        return SplitSpacing(None, 0, n_images)
    found = [valid_spacing(spacing_of(i)) for i in range(n_images)]
    spaced = [s for s in found if s is not None]
    if n_images and len(spaced) == n_images:
        return SplitSpacing(spaced, n_images, n_images)
    return SplitSpacing(None, len(spaced), n_images)


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside it or on the image edge (erosion pads with 0)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=CROSS, border_value=0)


def _crop(pred: np.ndarray, truth: np.ndarray) -> tuple[slice, slice]:
    """The box around both masks, one pixel wider where the image allows: every boundary pixel and its
    nearest counterpart lie inside, so the distance transforms run on the box only (objects are
    usually small against the image), and a box edge that is not the image edge lies on background,
    so it invents no boundary."""
    rows = np.flatnonzero((pred | truth).any(axis=1))
    cols = np.flatnonzero((pred | truth).any(axis=0))
    h, w = pred.shape
    return (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)), slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)))


def directed_distances(pred: np.ndarray, truth: np.ndarray,
                       spacing: Sequence[float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each prediction-boundary pixel to the truth boundary, and back (both non-empty)."""
    box = _crop(pred, truth)
    bp, bt = boundary(pred[box]), boundary(truth[box])
    to_truth = ndimage.distance_transform_edt(~bt, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return to_truth[bp], to_pred[bt]


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0),
                    tolerance: float = 2.0) -> Surface:
    """HD95, ASSD and surface Dice of two binary masks [H,W] (module docstring for the definitions)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"surface metrics need two masks [H,W] of one shape, got {pred.shape} and {truth.shape}")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return Surface(float("nan"), float("nan"), float("nan"), BOTH_EMPTY)
    if not (has_pred and has_truth):
        return Surface(float("inf"), float("inf"), 0.0, ONE_EMPTY)
    d_pt, d_tp = directed_distances(pred, truth, spacing)
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    assd = float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))
    nsd = float(((d_pt <= tolerance).sum() + (d_tp <= tolerance).sum()) / (d_pt.size + d_tp.size))
    return Surface(hd95, assd, nsd, BOTH)


def class_surfaces(pred: np.ndarray, truth: np.ndarray, classes: Iterable[int], valid: np.ndarray | None = None,
                   spacing: Sequence[float] = (1.0, 1.0), tolerance: float = 2.0) -> list[Surface]:
    """`surface_metrics` per class id of label maps [H,W]; pixels outside `valid` (not scored) belong
    to neither mask."""
    keep = np.ones(pred.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    return [surface_metrics((pred == c) & keep, (truth == c) & keep, spacing, tolerance) for c in classes]


def summarise(values: Sequence[Surface]) -> dict[str, float | int]:
    """Means, standard deviations and medians over images by the module's empty-mask rules, with the
    counts that were left out of them."""
    states = [v.state for v in values]
    both = [v for v in values if v.state == BOTH]
    scored = [v for v in values if v.state != BOTH_EMPTY]
    out: dict[str, float | int] = {"n_images": len(values), "n_scored": len(both),
                                   "n_one_empty": states.count(ONE_EMPTY), "n_both_empty": states.count(BOTH_EMPTY)}
    for key, group in (("hd95", both), ("assd", both), ("surface_dice", scored)):
        array = np.array([getattr(v, key) for v in group], dtype=np.float64)
        out.update(_stats(key, array))
    return out


def _stats(key: str, array: np.ndarray) -> dict[str, float]:
    """mean/std/median of finite values; NaN (written as null) when there are none."""
    if array.size == 0:
        return {key: float("nan"), f"{key}_std": float("nan"), f"{key}_median": float("nan")}
    return {key: float(array.mean()), f"{key}_std": float(array.std()), f"{key}_median": float(np.median(array))}
