"""U-Net border weight maps on synthetic masks with known geometry."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage

from seg.errors import DatasetError
from seg.weightmap import unet_weight_map


def two_squares(gap: int = 2) -> np.ndarray:
    """Two 10x10 cells separated by a `gap`-pixel membrane, in a 40x60 background."""
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:20] = 1
    mask[10:20, 20 + gap : 30 + gap] = 1
    return mask


def test_class_balance_alone_has_mean_one() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:6] = 1  # one object: no border term
    w = unet_weight_map(mask)
    assert w.dtype == np.float32 and w.shape == mask.shape
    assert w.mean() == pytest.approx(1.0, abs=1e-6)
    assert w[3, 3] == pytest.approx(100 / (2 * 12))
    assert w[8, 8] == pytest.approx(100 / (2 * 88))


def test_gap_between_touching_cells_is_heavily_weighted() -> None:
    mask = two_squares(gap=2)
    w = unet_weight_map(mask, w0=10.0, sigma=5.0)
    n_fg = int(mask.sum())
    bg_class = mask.size / (2.0 * (mask.size - n_fg))
    # gap pixel (15, 20): 1 px from the left cell and 2 px from the right one
    assert w[15, 20] == pytest.approx(bg_class + 10 * math.exp(-(1 + 2) ** 2 / 50), rel=1e-5)
    far = w[35, 55]
    assert far == pytest.approx(bg_class, rel=1e-4)
    assert w[15, 20] > 5 * far
    # pixels inside the cells carry only their class weight
    assert np.allclose(w[mask == 1], mask.size / (2.0 * n_fg))


def test_matches_exact_computation_within_reach() -> None:
    rng = np.random.default_rng(0)
    mask = (ndimage.gaussian_filter(rng.random((48, 48)), 2) > 0.52).astype(np.uint8)
    labels, n = ndimage.label(mask)
    assert n >= 3
    dists = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in range(1, n + 1)]), axis=0)
    border = 10 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * 5.0**2)) * (mask == 0)
    exact = unet_weight_map(mask, w0=0.0) + border
    # the truncation to 4 sigma drops at most w0 * exp(-8)
    assert np.abs(unet_weight_map(mask) - exact).max() <= 10 * math.exp(-8) + 1e-5


def test_ignore_pixels_get_zero_and_other_foreground_value() -> None:
    mask = two_squares() * 255
    w = unet_weight_map(mask, foreground=255)
    assert w[15, 20] > 3.0  # 255 is the object value here, not "ignore"
    labelled = two_squares()
    labelled[:, :5] = 255
    w = unet_weight_map(labelled)
    assert np.all(w[:, :5] == 0)
    balance = unet_weight_map(labelled, w0=0.0)
    assert balance[labelled != 255].mean() == pytest.approx(1.0, abs=1e-6)
    assert np.all(balance[:, :5] == 0)


def test_many_objects_stay_fast() -> None:
    mask = np.zeros((512, 512), np.uint8)
    for r in range(0, 512, 16):
        for c in range(0, 512, 16):
            mask[r + 1 : r + 15, c + 1 : c + 15] = 1  # 1024 cells, 2-px membranes
    start = time.perf_counter()
    w = unet_weight_map(mask)
    assert time.perf_counter() - start < 5.0
    assert w[8, 16] > 9.0  # membrane pixel 1 px from two cells: w0 * exp(-4 / 50) = 9.2 plus class weight


def test_bad_input() -> None:
    with pytest.raises(DatasetError, match="2-D"):
        unet_weight_map(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="sigma"):
        unet_weight_map(np.zeros((4, 4), np.uint8), sigma=0.0)
