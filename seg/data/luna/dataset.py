"""LUNA16 as 2-D slices with neighbouring slices as channels, read from the prepared cache.

Series are sorted by uid; every `val_stride`-th one (0, stride, 2*stride, ...) is validation, the rest
train. LUNA16 has no test split. Training items are random `crop_size` crops inside a `window` centred
on an annotated nodule (nodule `i % n_nodules` for item i, so `epoch_samples` fixes the epoch length);
validation items are whole slices that hold mask (every slice with `full_ct`). Images are float32 HU
(clipped); the U-Net's input BatchNorm normalises them. Volumes stay on disk, memory-mapped, with at
most `MAX_OPEN` series mapped per process, so RAM does not grow with the number of series.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from seg.data.base import SegDataModule, check_split
from seg.data.luna.items import LunaCropDataset, LunaSliceDataset, SeriesStore
from seg.data.luna.prepare import PrepareSettings, Release, SeriesIndex, prepare, scan_release, series_files
from seg.data.sources import SourceStats
from seg.errors import ConfigError, DatasetError

log = logging.getLogger("seg.data")

PREVIEW_SLICES = 6


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"dataset.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Luna16Data(SegDataModule):
    """LUNA16 lung-nodule segmentation (binary, one logit); see the module docstring."""

    name = "luna16"

    def __init__(
        self,
        *,
        root: str | None = None,
        cache_dir: str | None = None,
        context_slices: int = 3,
        val_stride: int = 10,
        crop_size: int = 64,
        window: int = 96,
        epoch_samples: int = 20000,
        full_ct: bool = False,
        hu_clip: Sequence[float] = (-1000, 1000),
        mask_threshold_hu: float = -700,
        in_channels: int | None = None,
        n_classes: int = 1,
        class_names: Sequence[str] = ("nodule",),
        image_size: Any = None,
        max_series: int | None = None,
        prepare_workers: int = 1,
    ) -> None:
        self.context = _positive_int("context_slices", context_slices, 0)
        channels = 2 * self.context + 1
        if in_channels is not None and in_channels != channels:
            raise ConfigError(
                f"dataset.in_channels={in_channels!r} but context_slices={self.context} gives {channels} "
                "channels (the slice and its neighbours); leave in_channels at ${seg.ctx_channels:${.context_slices}}"
            )
        self.set_meta(channels, n_classes, class_names)
        self.require("n_classes", self.n_classes, 1)
        if image_size is not None:
            raise ConfigError(
                f"dataset.image_size={image_size!r}: LUNA16 slices are used at their native size (512x512) "
                "so voxel positions stay exact; set dataset.image_size=null and use crop_size for training"
            )
        self.val_stride = _positive_int("val_stride", val_stride, 2)
        self.crop_size = _positive_int("crop_size", crop_size)
        self.window = _positive_int("window", window)
        if self.window < self.crop_size:
            raise ConfigError(f"dataset.window={window} must be >= dataset.crop_size={crop_size}")
        self.epoch_samples = _positive_int("epoch_samples", epoch_samples)
        self.max_series = None if max_series is None else _positive_int("max_series", max_series)
        self.prepare_workers = _positive_int("prepare_workers", prepare_workers)
        self.full_ct = bool(full_ct)
        self.settings = PrepareSettings.create(hu_clip, mask_threshold_hu)
        self.root = root
        self.cache_dir = cache_dir
        self._release: Release | None = None
        self._split: dict[str, list[str]] | None = None
        self._index: dict[str, SeriesIndex] = {}
        self._store: SeriesStore | None = None
        self._datasets: dict[str, Dataset] = {}
        self._sources: SourceStats | None = None
        self._outside_reported: set[str] = set()

    @property
    def release(self) -> Release:
        if self._release is None:
            self._release = scan_release(self.root)
        return self._release

    def series(self) -> list[str]:
        """Series in use, sorted; `max_series` keeps the first annotated ones (quick runs)."""
        uids = sorted(self.release.series)
        if self.max_series is not None:
            uids = [u for u in uids if u in self.release.annotations][: self.max_series]
        return uids

    def split_ids(self) -> dict[str, list[str]]:
        if self._split is None:
            uids = self.series()
            val = set(uids[:: self.val_stride])
            self._split = {"train": [u for u in uids if u not in val], "val": sorted(val), "test": []}
        return self._split

    def source_stats(self) -> SourceStats:
        """The .mhd/.raw of every series in use, and annotations.csv: stat'ed once per start."""
        if self._sources is None:
            annotations = Path(str(self.root)).expanduser() / "annotations.csv"
            self._sources = SourceStats.collect(
                self.series(), lambda uid: series_files(self.release.series[uid]), extra=[annotations]
            )
        return self._sources

    def source_fingerprint(self) -> dict[str, Any] | None:
        return self.source_stats().fingerprint()

    def _prepared(self, uids: Sequence[str]) -> tuple[SeriesStore, dict[str, SeriesIndex]]:
        missing = [u for u in uids if u not in self._index]
        if missing or self._store is None:
            sources = self.source_stats()
            entry, indices, _ = prepare(
                self.release, missing, cache_dir=self.cache_dir, settings=self.settings,
                workers=self.prepare_workers, stats=dict(zip(sources.files, sources.stats)),
            )  # fmt: skip
            self._index.update(indices)
            self._store = self._store or SeriesStore(entry)
        index = {u: self._index[u] for u in uids}
        self._report_outside(index)
        return self._store, index

    def _report_outside(self, index: dict[str, SeriesIndex]) -> None:
        """seg-prepare counts annotations whose centre lies outside their volume; training says so too,
        once per series, as those nodules are silently missing from the masks otherwise."""
        outside = {u: ix.outside for u, ix in index.items() if ix.outside and u not in self._outside_reported}
        if outside:
            self._outside_reported.update(outside)
            shown = ", ".join(list(outside)[:3]) + (f", ... ({len(outside) - 3} more)" if len(outside) > 3 else "")
            log.warning(
                "luna16: %d annotation(s) in annotations.csv lie outside their series' volume and are not "
                "used (%d series: %s); check those rows' coordinates (world mm, x y z)",
                sum(outside.values()), len(outside), shown,
            )

    def _train(self) -> LunaCropDataset:
        uids = [u for u in self.split_ids()["train"] if u in self.release.annotations]
        store, index = self._prepared(uids)
        nodules = [(u, *(int(v) for v in n)) for u in uids for n in index[u].nodules]
        if not nodules:
            raise DatasetError(
                f"the {len(self.split_ids()['train'])} training series hold no annotated nodule inside their "
                "volume: use more series (dataset.max_series) or check annotations.csv"
            )
        small = [u for u in uids if min(index[u].shape[1:]) < self.crop_size]
        if small:
            raise DatasetError(
                f"series {small[0]} has slices of {index[small[0]].shape[1:]} voxels, smaller than "
                f"dataset.crop_size={self.crop_size}: lower crop_size"
            )
        shapes = {u: index[u].shape for u in uids}
        return LunaCropDataset(
            store, nodules, shapes, context=self.context, crop_size=self.crop_size,
            window=self.window, epoch_samples=self.epoch_samples,
            spacing={u: index[u].pixel_spacing() for u in uids},
        )  # fmt: skip

    def _val(self) -> LunaSliceDataset:
        uids = self.split_ids()["val"]
        if not self.full_ct:
            uids = [u for u in uids if u in self.release.annotations]
        store, index = self._prepared(uids)
        samples = []
        for u in uids:
            depth = index[u].shape[0]
            slices = range(depth) if self.full_ct else index[u].positive_slices
            samples += [(u, int(s), depth) for s in slices]
        if not samples:
            raise DatasetError(
                f"the {len(self.split_ids()['val'])} validation series have no slice with nodule mask: "
                "set dataset.full_ct=true, use more series (dataset.max_series) or a smaller val_stride"
            )
        # Every cached series records its geometry, so every slice has a spacing: surface metrics in mm.
        return LunaSliceDataset(store, samples, self.context, {u: index[u].pixel_spacing() for u in uids})

    def dataset(self, split: str) -> Dataset:
        check_split(split)
        if split == "test":
            raise ConfigError("LUNA16 has no test split; use split=val")
        if split not in self._datasets:
            self._datasets[split] = self._train() if split == "train" else self._val()
        return self._datasets[split]

    def preview_indices(self, split: str, k: int) -> list[int]:
        """Validation preview: up to max(1, k // 6) series x 6 evenly spaced slices of each.

        With positive-only validation the 6 are spread over that series' positive slices (the only
        ones in the dataset); with full_ct over the whole series, as in the book's image log.
        """
        if split != "val" or k <= 0:
            return super().preview_indices(split, k)
        ds = self.dataset("val")
        positions: dict[str, list[int]] = {}
        for i, (uid, _, _) in enumerate(ds.samples):  # type: ignore[attr-defined]
            positions.setdefault(uid, []).append(i)
        chosen: list[int] = []
        for uid in list(positions)[: max(1, k // PREVIEW_SLICES)]:
            items = positions[uid]
            picks = np.linspace(0, len(items) - 1, num=min(PREVIEW_SLICES, len(items)))
            chosen += sorted({items[int(round(p))] for p in picks})
        return chosen
