"""The U-Net paper's per-pixel loss weights: balance the classes and make the thin background gaps
between touching objects expensive, so the network learns to keep neighbouring cells apart.

Computed once per mask by the dataset (it is cached next to the arrays), never in the training loop.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.measure import label

from seg.constants import IGNORE_INDEX
from seg.errors import DatasetError


def unet_weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    foreground: int = 1,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)) on background pixels.

    `mask == foreground` are objects (cells); everything else is background (membrane). w_c is the
    inverse class frequency scaled so the map's mean is exactly 1 before the border term. Objects are
    4-connected components, so cells touching only at a corner stay two objects. d1, d2 are the
    distances to the nearest and second-nearest object. Pixels equal to `ignore_index` get weight 0
    and do not count towards the class frequencies.

    Only distances up to R = 4 sigma are computed (one distance transform per object, inside its
    bounding box grown by R), so the cost grows with the objects' area, not objects x image. The term
    dropped that way is below w0 * exp(-8), i.e. < 0.4 % of w0.
    """
    if mask.ndim != 2:
        raise DatasetError(f"unet_weight_map expects a 2-D label mask (H, W), got shape {mask.shape}")
    if sigma <= 0 or w0 < 0:
        raise DatasetError(f"unet_weight_map needs sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    valid = np.ones(mask.shape, bool) if ignore_index is None or ignore_index == foreground else mask != ignore_index
    objects = (mask == foreground) & valid
    weights = _class_balance(objects, valid)
    weights += _border_term(objects, w0, sigma) * (valid & ~objects)
    weights[~valid] = 0.0
    return weights.astype(np.float32)


def _class_balance(objects: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Weights 1/(2 f_c): both classes then carry half of the total weight, and the mean is 1."""
    n_valid = int(valid.sum())
    n_fg = int(objects.sum())
    out = np.ones(objects.shape, np.float64)
    if n_valid == 0 or n_fg in (0, n_valid):
        return out
    out[objects] = n_valid / (2.0 * n_fg)
    out[valid & ~objects] = n_valid / (2.0 * (n_valid - n_fg))
    return out


def _border_term(objects: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    labels, n = label(objects, connectivity=1, return_num=True)
    if n < 2 or w0 == 0:
        return np.zeros(objects.shape, np.float64)
    reach = int(math.ceil(4.0 * sigma))
    d1 = np.full(objects.shape, np.inf)
    d2 = np.full(objects.shape, np.inf)
    h, w = objects.shape
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, h))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, w))
        # The whole object lies inside the window, so distances inside it are exact.
        dist = ndimage.distance_transform_edt(labels[rows, cols] != index)
        near, second = d1[rows, cols], d2[rows, cols]
        d2[rows, cols] = np.minimum(second, np.maximum(near, dist))
        d1[rows, cols] = np.minimum(near, dist)
    total = d1 + d2
    return np.where(np.isfinite(total), w0 * np.exp(-(total**2) / (2.0 * sigma**2)), 0.0)
