"""What LUNA16 items are made of: memory-mapped series, whole validation slices and random training
crops around nodules, each with the slice's neighbours as channels."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seg.data.luna.prepare import array_paths

MAX_OPEN = 16

Spacings = Mapping[str, tuple[float, float]]  # series uid -> (row mm, column mm) of its slices


class SeriesStore:
    """Memory-mapped (hu, mask) pairs of prepared series, least recently used ones closed first."""

    def __init__(self, entry: Path, max_open: int = MAX_OPEN) -> None:
        self.entry = entry
        self.max_open = max_open
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def arrays(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        if uid in self._open:
            self._open.move_to_end(uid)
        else:
            hu_file, mask_file = array_paths(self.entry, uid)
            self._open[uid] = (np.load(hu_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r"))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[uid]

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen their own maps; pickling a memmap would copy the whole volume.
        return {"entry": self.entry, "max_open": self.max_open, "_open": OrderedDict()}


def context_indices(slice_index: int, context: int, depth: int) -> np.ndarray:
    """The slice and `context` neighbours each side, repeating the first/last slice past the ends."""
    return np.clip(np.arange(slice_index - context, slice_index + context + 1), 0, depth - 1)


class LunaSliceDataset(Dataset):
    """Whole slices (validation): image [2k+1, H, W] float32 HU, mask [H, W] of the centre slice."""

    def __init__(self, store: SeriesStore, samples: Sequence[tuple[str, int, int]], context: int,
                 spacing: Spacings | None = None) -> None:
        self.store = store
        self.samples = list(samples)  # (uid, slice, depth)
        self.context = context
        self.ids = [f"{uid}:{s}" for uid, s, _ in self.samples]
        self.spacing = dict(spacing or {})

    def pixel_spacing(self, index: int) -> tuple[float, float] | None:
        """(row mm, column mm) of item `index` (seg.data.spacing): slices are served at native size."""
        return self.spacing.get(self.samples[index][0])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        uid, s, depth = self.samples[index]
        hu, mask = self.store.arrays(uid)
        image = np.asarray(hu[context_indices(s, self.context, depth)], dtype=np.float32)
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(np.array(mask[s], dtype=np.uint8)),
            "index": index,
        }


class _CropIds(Sequence):
    """`<uid>:<slice>:<item>` made on demand: an epoch can hold hundreds of thousands of items."""

    def __init__(self, nodules: Sequence[tuple[str, int, int, int]], length: int) -> None:
        self.nodules, self.length = nodules, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not -self.length <= i < self.length:
            raise IndexError(i)
        i %= self.length
        uid, s, _, _ = self.nodules[i % len(self.nodules)]
        return f"{uid}:{s}:{i}"


class LunaCropDataset(Dataset):
    """Random crops around nodules (training). Where a crop lands comes from the `rng` that `draw`
    is given: the trainer passes one per (seed, epoch, item), so runs repeat with the seed whatever
    the number of loader workers, and a run resumed mid-epoch draws the crops it would have drawn."""

    def __init__(
        self,
        store: SeriesStore,
        nodules: Sequence[tuple[str, int, int, int]],
        shapes: dict[str, tuple[int, int, int]],
        *,
        context: int,
        crop_size: int,
        window: int,
        epoch_samples: int,
        spacing: Spacings | None = None,
    ) -> None:
        self.store, self.nodules, self.shapes = store, list(nodules), shapes
        self.context, self.crop, self.window, self.length = context, crop_size, window, epoch_samples
        self.ids = _CropIds(self.nodules, epoch_samples)
        self.spacing = dict(spacing or {})

    def pixel_spacing(self, index: int) -> tuple[float, float] | None:
        """(row mm, column mm) of item `index`: a crop keeps its series' native spacing."""
        return self.spacing.get(self.nodules[index % len(self.nodules)][0])

    def __len__(self) -> int:
        return self.length

    def _start(self, centre: int, size: int, rng: np.random.Generator) -> int:
        """Top-left of the crop along one axis: window centred on the nodule, kept inside the slice."""
        window = min(self.window, size)
        first = min(max(centre - window // 2, 0), size - window)
        return first + int(rng.integers(0, window - self.crop + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The crop of item `index` outside training (previews): the same one every time."""
        return self.draw(index, np.random.default_rng(index))

    def draw(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        uid, s, r, c = self.nodules[index % len(self.nodules)]
        depth, height, width = self.shapes[uid]
        r0, c0 = self._start(r, height, rng), self._start(c, width, rng)
        rows, cols = slice(r0, r0 + self.crop), slice(c0, c0 + self.crop)
        hu, mask = self.store.arrays(uid)
        image = np.asarray(hu[context_indices(s, self.context, depth), rows, cols], dtype=np.float32)
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(np.array(mask[s, rows, cols], dtype=np.uint8)),
            "index": index,
        }
