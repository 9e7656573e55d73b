"""What every dataset gives the engine, and the cached-array base most readers build on.

A dataset config instantiates a `SegDataModule`. Items of its torch datasets are dicts:
  image : Tensor[C,H,W], uint8 (scaled to [0,1] on the device) or float32 (used as is, e.g. CT in HU)
  mask  : Tensor[H,W] uint8 class ids; binary sets use {0,1}; IGNORE_INDEX marks pixels not scored
  index : int, position in the split (so `dataset.ids[index]` names the case)
  weight: Tensor[H,W] float32, optional per-pixel loss weights
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.transform import resize
from torch.utils.data import Dataset

from seg.constants import IGNORE_INDEX
from seg.data.cache import CachedArrays, build_or_load
from seg.data.checks import by_reason, report_mask_values, report_skipped
from seg.data.sources import SourceStats
from seg.data.split import SPLITS, check_folds, check_ratios, fold_split, seeded_split
from seg.errors import ConfigError, DatasetError

DEFAULT_RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


class SegDataModule(ABC):
    """Channel and class counts, class names, and one torch Dataset per split."""

    name: str = "dataset"
    in_channels: int = 3
    n_classes: int = 1  # 1 = binary with a single logit; >1 = one logit per class
    class_names: list[str] = ["foreground"]

    @abstractmethod
    def split_ids(self) -> dict[str, list[str]]:
        """Case ids per split; written to split.json in the run directory."""

    @abstractmethod
    def dataset(self, split: str) -> Dataset:
        """A Dataset of item dicts (see module docstring) with an `ids` list attribute."""

    def set_meta(
        self, in_channels: int | None, n_classes: int | None, class_names: Sequence[str] | None
    ) -> None:
        """Take channel/class settings from the config; the config is the single place a model reads
        them from (`${dataset.in_channels}`), so a reader checks them rather than silently differing."""
        if in_channels is not None:
            self.in_channels = int(in_channels)
        if n_classes is not None:
            self.n_classes = int(n_classes)
        if class_names is not None:
            self.class_names = [str(c) for c in class_names]
        expected = 1 if self.n_classes == 1 else self.n_classes
        if len(self.class_names) != expected:
            raise ConfigError(
                f"dataset.class_names has {len(self.class_names)} name(s) {self.class_names} but "
                f"n_classes={self.n_classes} needs {expected} (binary sets name only the foreground)"
            )

    def require(self, key: str, value: Any, expected: Any) -> None:
        """Fail at start when a config value contradicts what the data really is."""
        if value != expected:
            raise ConfigError(f"{self.name}: dataset.{key}={value!r} does not fit this dataset, expected {expected!r}")

    def source_fingerprint(self) -> dict[str, Any] | None:
        """{"files": count, "sha256": hex digest of the sorted (relative path, size, mtime_ns) of every
        source file}, for provenance (stored in checkpoints, compared on resume); None for generated
        data. Costs one stat per file, shared with the cache's own staleness check."""
        return None

    def preview_indices(self, split: str, k: int) -> list[int]:
        """Fixed items shown in TensorBoard at every validation: evenly spaced, same every time."""
        n = len(self.dataset(split))
        if n == 0 or k <= 0:
            return []
        return sorted({int(i) for i in np.linspace(0, n - 1, num=min(k, n))})


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: expected one of {list(SPLITS)}")


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ConfigError(f"dataset.image_size must be an int or [height, width], got {image_size!r}")
    return size  # type: ignore[return-value]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize of an HxWxC image; uint8 stays uint8, other types keep their values."""
    if image.shape[:2] == size:
        return np.ascontiguousarray(image)
    out = resize(image, size, order=1, mode="reflect", anti_aliasing=True, preserve_range=True)
    if image.dtype != np.uint8:
        return out.astype(image.dtype)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: tuple[int, int], binary: bool) -> np.ndarray:
    """Masks stay label maps: binary masks by thresholding a linear resize at 0.5 (smooth edges),
    class maps by nearest neighbour (no invented classes)."""
    if mask.shape[:2] == size:
        return np.ascontiguousarray(mask, dtype=np.uint8)
    if binary:
        out = resize((mask == 1).astype(np.float32), size, order=1, mode="edge", anti_aliasing=False)
        out = (out > 0.5).astype(np.uint8)
        if (mask == IGNORE_INDEX).any():  # "not scored" pixels must not turn into foreground
            ignored = resize(mask == IGNORE_INDEX, size, order=0, mode="edge", anti_aliasing=False)
            out[ignored] = IGNORE_INDEX
        return out
    out = resize(mask, size, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return out.astype(np.uint8)


class ArrayDataset(Dataset):
    """A split view over cached (possibly memory-mapped) arrays."""

    def __init__(self, arrays: CachedArrays, indices: Sequence[int]) -> None:
        self.arrays = arrays
        self.indices = np.asarray(indices, dtype=np.int64)
        self.ids = [arrays.ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(self.indices[index])
        # np.array copies out of the read-only memory map into a writable, contiguous CHW array.
        image = np.array(np.moveaxis(self.arrays.images[i], -1, 0), order="C")
        item = {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(np.array(self.arrays.masks[i], order="C")),
            "index": index,
        }
        if self.arrays.weights is not None:
            item["weight"] = torch.from_numpy(np.array(self.arrays.weights[i], order="C"))
        return item


class CachedArrayData(SegDataModule):
    """Base for readers whose cases decode to one image + mask: list cases, decode each once into a
    cache of resized arrays, split by case id.

    Subclasses implement `list_cases()` (validate the layout, return sorted ids) and
    `load_case(id)` (decode at native resolution: HxWxC uint8 image, HxW uint8 mask), and may override
    `official_split()` when the release ships its own split, or `cache_fields()` for extra settings.

    The arguments below are declared here only: a reader lists its own parameters (and those whose
    default differs, e.g. image_size) and passes the rest on as `**common`. Per-reader defaults of
    in_channels, n_classes and class_names are class attributes (a None argument keeps them).
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        image_size: int | Sequence[int] = 256,
        split: Mapping[str, float] | None = None,
        split_seed: int = 42,
        folds: int | None = None,
        fold: int | None = 0,
        cache_dir: str | None = None,
        in_channels: int | None = None,
        n_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        **unknown: Any,
    ) -> None:
        self.refuse(type(self), unknown, *unknown)  # a typo is reported under the reader's own name
        self.set_meta(in_channels, n_classes, class_names)
        self.root = Path(root).expanduser() if root else None
        self.image_size = as_size(image_size)
        self.ratios = dict(split) if split else dict(DEFAULT_RATIOS)
        check_ratios(self.ratios)  # at construction, not after minutes of building the cache
        self.split_seed = int(split_seed)
        self.folds, self.fold = check_folds(folds, fold)  # K folds of train+val; fold k validates
        self.cache_dir = cache_dir
        self._arrays: CachedArrays | None = None
        self._sources: SourceStats | None = None
        self._split: dict[str, list[str]] | None = None
        self._datasets: dict[str, ArrayDataset] = {}
        # case -> note on its mask, filled by decoding threads (dict stores are atomic under the GIL)
        self._notes: dict[str, dict[str, Any]] = {}

    @staticmethod
    def refuse(reader: type, common: Mapping[str, Any], *keys: str) -> None:
        """Refuse `keys` of `common` as Python refuses an unknown keyword of `reader`: typos, and base
        arguments a reader's release fixes (its split), which **common would otherwise take and ignore."""
        for key in keys:
            if key in common:
                raise TypeError(f"{reader.__name__}.__init__() got an unexpected keyword argument {key!r}")

    @abstractmethod
    def list_cases(self) -> list[str]: ...

    @abstractmethod
    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]: ...

    def case_sources(self, case_id: str) -> list[Path]:
        """The files case `case_id` is decoded from (image, mask, a shared label file): their size and
        mtime tell a stale cached row from a fresh one and make the fingerprint. Readers of files
        override this; a reader that names none gets neither check."""
        return []

    def official_split(self, ids: list[str]) -> dict[str, list[str]] | None:
        return None

    def fold_strata(self, ids: list[str]) -> dict[str, bool] | None:
        """Case -> stratum (mask empty or not) that folds keep the share of; None: plain folds."""
        return None

    def cache_fields(self) -> dict[str, Any]:
        root = str(self.root.resolve()) if self.root else None
        return {"name": self.name, "root": root, "image_size": list(self.image_size)}

    def weight_fn(self) -> Any:
        """Optional per-mask weight-map function computed once into the cache (None: no weights)."""
        return None

    def _load_resized(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.load_case(case_id)
        if image.ndim == 2:
            image = image[..., None]
        return resize_image(image, self.image_size), resize_mask(mask, self.image_size, self.n_classes == 1)

    def _decode(self, case_id: str) -> tuple[Any, ...]:
        """The cache's loader: the resized case plus what load_case noted about it, kept in the cache."""
        image, mask = self._load_resized(case_id)
        return image, mask, self._notes.pop(case_id, None)

    # What a binary reader expects in its stored masks and what it does with other values, for the
    # warning of note_mask_values (see seg.data.checks).
    mask_expected = ""
    mask_treatment = ""

    def note_mask_values(self, case_id: str, raw: np.ndarray, expected: Callable[[set[int]], bool]) -> None:
        """Note a stored uint8 mask whose set of values is not what the release holds (`expected` of it
        is False): it is still read by the reader's rule, and one warning names such masks."""
        found = np.flatnonzero(np.bincount(raw.ravel(), minlength=256)).tolist()
        if not expected(set(found)):
            self._notes[case_id] = {"mask_values": found}

    def source_stats(self) -> SourceStats:
        """The cases and their source files' stats, gathered once (before any decoding)."""
        if self._sources is None:
            self._sources = SourceStats.collect(self.list_cases(), self.case_sources)
        return self._sources

    def source_fingerprint(self) -> dict[str, Any] | None:
        return self.source_stats().fingerprint()

    @property
    def arrays(self) -> CachedArrays:
        if self._arrays is None:
            sources = self.source_stats()
            self._arrays = build_or_load(
                self.cache_dir, self.name, self.cache_fields(), list(sources.cases), self._decode,
                self.weight_fn(), sources=sources,
            )
            self.report(self._arrays)
        return self._arrays

    def report(self, arrays: CachedArrays) -> None:
        """Warn, once per dataset and at every start, about cases left out and unexpected mask values."""
        report_skipped(self.name, self.root, by_reason(arrays.skipped))
        report_mask_values(self.name, arrays.notes, len(arrays.ids), self.mask_expected, self.mask_treatment)

    def split_ids(self) -> dict[str, list[str]]:
        if self._split is None:
            skipped = self.arrays.skipped
            ids = [c for c in self.arrays.ids if c not in skipped]
            if not ids:
                raise DatasetError(f"{self.name}: no usable case under {self.root}: every case was skipped")
            split = self.official_split(ids) or seeded_split(ids, self.ratios, self.split_seed)
            if self.folds is not None:  # the test split stays; train+val are cut into folds
                pool = [c for v in split.values() for c in v]
                split = fold_split(pool, split["test"], self.folds, self.fold, self.split_seed, self.fold_strata(pool))
            self._split = {s: [c for c in v if c not in skipped] for s, v in split.items()}
        return self._split

    def dataset(self, split: str) -> ArrayDataset:
        check_split(split)
        if split not in self._datasets:
            position = {case: i for i, case in enumerate(self.arrays.ids)}
            indices = [position[c] for c in self.split_ids()[split]]
            self._datasets[split] = ArrayDataset(self.arrays, indices)
        return self._datasets[split]
