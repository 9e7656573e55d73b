"""ISBI 2012 EM segmentation challenge: 30 serial-section TEM slices of the Drosophila nerve cord.

`root` holds two multi-page TIFF stacks: `train-volume.tif` (some copies: `train-input.tif`) and
`train-labels.tif`, 512x512 8-bit grey, labels 255 = cell interior and 0 = membrane. We predict the
cells as foreground (1) and membranes as background (0); the U-Net paper phrases the task as finding
membranes, which is the same boundary with the classes swapped.

Stacks are read with tifffile (already required by scikit-image): it returns every page of a stack
as one array regardless of compression or page layout, where PIL needs a page-by-page loop.

The split is by slice index, because neighbouring slices are nearly identical: the last `val_slices`
slices validate, the rest train (22/8 by default, as in the reference). The labelled release has no
test stack (its test volume's labels were never published), so `dataset("test")` is an error.

With `weight_map: true`, each stored mask gets the U-Net paper's weight map (class balance plus
`w0 * exp(-(d1 + d2)^2 / (2 sigma^2))` on the membranes between touching cells), computed once at the
stored resolution into the cache, and items carry it as `weight`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from seg.data.base import ArrayDataset, CachedArrayData, check_split
from seg.data.io import scale_to_uint8
from seg.errors import ConfigError, DatasetError
from seg.weightmap import unet_weight_map

VOLUME_NAMES = ("train-volume.tif", "train-input.tif")
LABELS_NAME = "train-labels.tif"


def read_stack(path: Path) -> np.ndarray:
    """NxHxW array of a multi-page grey TIFF."""
    try:
        stack = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise DatasetError(f"cannot read TIFF stack {path}: {exc}. Re-download this file.") from None
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise DatasetError(f"{path} holds an array of shape {stack.shape}; expected grey pages (N, H, W)")
    return stack


class ISBI2012Data(CachedArrayData):
    """ISBI 2012 EM membranes/cells (1 grey channel, binary: cells = 1)."""

    name = "isbi2012"
    in_channels = 1
    n_classes = 1
    class_names = ["cell"]

    def __init__(
        self,
        *,
        root: str,
        image_size: int | Sequence[int] = 512,
        val_slices: int = 8,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        **common: Any,
    ) -> None:
        """`common`: CachedArrayData's other arguments (cache_dir, in_channels, ...); not split,
        split_seed, folds or fold, as the last val_slices slices validate."""
        self.refuse(type(self), common, "split", "split_seed", "folds", "fold")
        super().__init__(root=root, image_size=image_size, **common)
        self.require("in_channels", self.in_channels, 1)
        self.require("n_classes", self.n_classes, 1)
        if int(val_slices) < 1:
            raise ConfigError(f"isbi2012: dataset.val_slices={val_slices!r} must be >= 1 (default 8 of 30)")
        if float(w0) < 0 or float(sigma) <= 0:
            raise ConfigError(f"isbi2012: dataset.w0={w0!r} must be >= 0 and dataset.sigma={sigma!r} > 0")
        self.val_slices = int(val_slices)
        self.weight_map = bool(weight_map)
        self.w0 = float(w0)
        self.sigma = float(sigma)
        self._volume: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._files: list[Path] = []

    def _locate(self) -> tuple[Path, Path]:
        if self.root is None or not self.root.is_dir():
            raise DatasetError(
                f"isbi2012: dataset.root {self.root} is not a folder; expected one holding "
                f"{' or '.join(VOLUME_NAMES)} and {LABELS_NAME}"
            )
        volume = next((self.root / n for n in VOLUME_NAMES if (self.root / n).is_file()), None)
        labels = self.root / LABELS_NAME
        if volume is None or not labels.is_file():
            found = sorted(p.name for p in self.root.glob("*.tif*"))
            raise DatasetError(
                f"isbi2012: {self.root} must hold {' or '.join(VOLUME_NAMES)} and {LABELS_NAME}; "
                f"TIFF files found: {found or 'none'}"
            )
        return volume, labels

    def list_cases(self) -> list[str]:
        volume_path, labels_path = self._locate()
        volume, labels = read_stack(volume_path), read_stack(labels_path)
        if volume.shape != labels.shape:
            raise DatasetError(
                f"isbi2012: {volume_path.name} is {volume.shape} (slices, height, width) but {labels_path.name} "
                f"is {labels.shape}; the stacks must match slice for slice"
            )
        values = np.unique(labels)
        if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
            raise DatasetError(
                f"isbi2012: {labels_path} is not a binary label stack: values {values[:10].tolist()}"
                f"{' ...' if values.size > 10 else ''} found, expected 0 (membrane) and 255 (cell)"
            )
        if self.val_slices >= len(volume):
            raise ConfigError(
                f"isbi2012: dataset.val_slices={self.val_slices} leaves no training slice out of {len(volume)}"
            )
        self._volume, self._labels = scale_to_uint8(volume, volume_path), (labels > 0).astype(np.uint8)
        self._files = [volume_path, labels_path]
        width = len(str(len(volume) - 1))
        return [f"slice-{i:0{width}d}" for i in range(len(volume))]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._volume is None or self._labels is None:
            self.list_cases()
        index = int(case_id.rsplit("-", 1)[1])
        return self._volume[index], self._labels[index]  # type: ignore[index]

    def case_sources(self, case_id: str) -> list[Path]:
        return list(self._files)  # every slice comes from both stacks

    def cache_fields(self) -> dict[str, Any]:
        fields = super().cache_fields()
        # The names only: a rewritten stack is caught by the per-row source stats (case_sources) and
        # decoded again into the same entry, rather than leaving the old entry behind.
        fields["files"] = [p.name for p in self._files]
        if self.weight_map:
            fields["weight_map"] = {"w0": self.w0, "sigma": self.sigma}
        return fields

    def weight_fn(self) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.weight_map:
            return None
        return functools.partial(unet_weight_map, w0=self.w0, sigma=self.sigma)

    def official_split(self, ids: list[str]) -> dict[str, list[str]]:
        cut = len(ids) - self.val_slices
        return {"train": ids[:cut], "val": ids[cut:], "test": []}

    def dataset(self, split: str) -> ArrayDataset:
        check_split(split)
        if split == "test":
            raise ConfigError("ISBI 2012 ships no labelled test stack; use split=val")
        return super().dataset(split)
