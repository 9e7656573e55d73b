"""Bring your own data: images and masks in two folders, paired by file name.

Layouts (checked in this order):
  flat       root/images/*, root/masks/*                     -> seeded train/val/test split by id
  pre-split  root/{train,val,test}/images/*, .../masks/*     -> those folders are the splits
             (train is required; without val/ a validation set is carved from train with a seed,
             without test/ the test split is empty)
A mask pairs with the image of the same name (relative path without suffix) plus `mask_suffix`, in any
format of seg.data.io.IMAGE_SUFFIXES. Case ids are the image names (`<split>/<name>` when pre-split,
so equal names in different split folders stay distinct).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seg.constants import IGNORE_INDEX
from seg.data.base import CachedArrayData, resize_image, resize_mask
from seg.data.checks import summarise
from seg.data.io import IMAGE_SUFFIXES, read_gray, read_label, read_rgb
from seg.data.split import SPLITS, refuse_folds, seeded_split
from seg.errors import ConfigError, DatasetError

log = logging.getLogger("seg.data")

UNMAPPED = ("error", "ignore")


def image_files(folder: Path, pattern: str) -> dict[str, Path]:
    """Name (relative path without suffix, posix) -> file, for image-like files matching `pattern`."""
    files: dict[str, Path] = {}
    for path in sorted(folder.glob(pattern)):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in files:
            raise DatasetError(
                f"{folder}: {files[key].name} and {path.name} share the name {key!r}, so which one pairs "
                "with a mask is ambiguous. Keep one file per name."
            )
        files[key] = path
    return files


def parse_value_map(value_map: Mapping[Any, Any] | None, n_classes: int) -> dict[int, int] | None:
    if value_map is None:
        return None
    try:
        parsed = {int(k): int(v) for k, v in dict(value_map).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"dataset.value_map={value_map!r}: expected integer pairs like {{0: 0, 255: 1}}") from None
    allowed = set(range(max(n_classes, 2))) | {IGNORE_INDEX}
    wrong = {k: v for k, v in parsed.items() if not 0 <= k <= 255 or v not in allowed}
    if wrong:
        raise ConfigError(
            f"dataset.value_map entries {wrong} are out of range: mask values are 0-255 and classes are "
            f"0..{max(n_classes, 2) - 1} (n_classes={n_classes}) or {IGNORE_INDEX} (ignored)"
        )
    return parsed


class FolderData(CachedArrayData):
    """Any image/mask folder pair. Binary sets (n_classes 1) read mask 0 as background and anything
    else as foreground unless `value_map` says otherwise; multi-class sets use the stored values as
    class ids unless mapped. `unmapped: ignore` turns unexpected values into IGNORE_INDEX instead of
    an error."""

    name = "folder"
    mask_expected = "0 and one other value (binary masks without dataset.value_map)"
    mask_treatment = (
        "every non-zero value is read as foreground; to say which values are foreground, set e.g. "
        "'dataset.value_map={0:0,255:1}' (other values then stop the run, or with dataset.unmapped=ignore "
        "are not scored)"
    )

    def __init__(
        self,
        *,
        root: str | None,
        images_dir: str = "images",
        masks_dir: str = "masks",
        image_glob: str = "*",
        mask_suffix: str = "",
        grayscale: bool = False,
        value_map: Mapping[Any, Any] | None = None,
        unmapped: str = "error",
        skip_unmatched: bool = False,
        val_fraction: float = 0.1,
        **common: Any,
    ) -> None:
        """`common`: CachedArrayData's arguments (image_size, split, split_seed, cache_dir, ...)."""
        super().__init__(root=root, **common)
        channels = 1 if grayscale else 3
        if self.in_channels != channels:
            raise ConfigError(
                f"dataset.grayscale={str(bool(grayscale)).lower()} gives {channels}-channel images but "
                f"dataset.in_channels={self.in_channels}: set dataset.in_channels={channels}"
            )
        if unmapped not in UNMAPPED:
            raise ConfigError(f"dataset.unmapped={unmapped!r}: expected one of {list(UNMAPPED)}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"dataset.val_fraction={val_fraction!r}: expected a number in [0, 1)")
        self.images_dir, self.masks_dir = str(images_dir), str(masks_dir)
        self.image_glob, self.mask_suffix = str(image_glob), str(mask_suffix or "")
        self.grayscale = bool(grayscale)
        self.value_map = parse_value_map(value_map, self.n_classes)
        self.unmapped = unmapped
        self.skip_unmatched = bool(skip_unmatched)
        self.val_fraction = float(val_fraction)
        self._pairs: dict[str, tuple[Path, Path]] | None = None

    def cache_fields(self) -> dict[str, Any]:
        value_map = sorted(self.value_map.items()) if self.value_map is not None else None
        return {
            **super().cache_fields(),
            "folders": [self.images_dir, self.masks_dir],
            "image_glob": self.image_glob,
            "mask_suffix": self.mask_suffix,
            "grayscale": self.grayscale,
            "value_map": value_map,
            "unmapped": self.unmapped,
            "skip_unmatched": self.skip_unmatched,
            "n_classes": self.n_classes,
        }

    # ----------------------------------------------------------------- layout

    def layout(self) -> dict[str, Path]:
        """Folder per split ('' for the flat layout) that holds images_dir and masks_dir."""
        root = self.root
        expected = (
            f"root/{self.images_dir}/ + root/{self.masks_dir}/, or root/train/{self.images_dir}/ + "
            f"root/train/{self.masks_dir}/ (optionally val/ and test/ alike)"
        )
        if root is None or not root.is_dir():
            raise DatasetError(f"dataset root not found: {root}. Set dataset.root to a folder laid out as {expected}.")
        flat = (root / self.images_dir).is_dir() or (root / self.masks_dir).is_dir()
        presplit = {s: root / s for s in SPLITS if (root / s / self.images_dir).is_dir()}
        if flat and presplit:
            raise DatasetError(
                f"{root} holds both {self.images_dir}/ and {sorted(presplit)} split folders; "
                f"keep one layout: {expected}"
            )
        parts = {"": root} if flat else presplit
        if not parts or (presplit and "train" not in presplit):
            found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:20]
            raise DatasetError(f"{root} is not laid out as {expected}; found {found}")
        for part in parts.values():
            for sub in (self.images_dir, self.masks_dir):
                if not (part / sub).is_dir():
                    raise DatasetError(f"missing folder {part / sub}: expected {expected}")
        return parts

    def pairs(self) -> dict[str, tuple[Path, Path]]:
        """Case id -> (image file, mask file), with unmatched files reported (or skipped) together."""
        if self._pairs is not None:
            return self._pairs
        pairs: dict[str, tuple[Path, Path]] = {}
        unmatched: dict[str, list[str]] = {}
        recursive = "**/*" if "**" in self.image_glob else "*"
        for split, part in self.layout().items():
            prefix = f"{split}/" if split else ""
            selected = image_files(part / self.images_dir, self.image_glob)
            every_image = image_files(part / self.images_dir, recursive)
            masks = image_files(part / self.masks_dir, recursive)
            for key, image in selected.items():
                mask = masks.get(key + self.mask_suffix)
                if mask is None:
                    unmatched.setdefault("images without mask", []).append(f"{prefix}{image.name}")
                else:
                    pairs[prefix + key] = (image, mask)
            for key, mask in masks.items():
                stem = key[: len(key) - len(self.mask_suffix)] if key.endswith(self.mask_suffix) else None
                if stem is None or stem not in every_image:
                    unmatched.setdefault("masks without image", []).append(f"{prefix}{mask.name}")
        hint = (
            f"(a mask is named <image name>{self.mask_suffix}.<png|jpg|...>; "
            "set dataset.mask_suffix if yours differ)"
        )
        if unmatched and not self.skip_unmatched:
            raise DatasetError(
                f"unpaired files under {self.root} {hint}; pair or remove them, or set "
                f"dataset.skip_unmatched=true to skip them:\n{summarise(unmatched)}"
            )
        if unmatched:
            log.warning("dataset under %s: skipped unpaired files %s:\n%s", self.root, hint, summarise(unmatched))
        if not pairs:
            raise DatasetError(
                f"no image/mask pairs under {self.root} with image_glob={self.image_glob!r} and "
                f"mask_suffix={self.mask_suffix!r} {hint}"
            )
        self._pairs = pairs
        return pairs

    def list_cases(self) -> list[str]:
        return sorted(self.pairs())

    def case_sources(self, case_id: str) -> list[Path]:
        return list(self.pairs()[case_id])

    # ------------------------------------------------------------------ cases

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs()[case_id]
        image = read_gray(image_path)[..., None] if self.grayscale else read_rgb(image_path)
        raw = read_label(mask_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height); masks must match their image"
            )
        if self.value_map is None and self.n_classes == 1:
            # "0 and anything else" is the rule, but several non-zero values in one mask suggest classes
            # that this rule merges: warn (they are still read as foreground).
            self.note_mask_values(case_id, raw, lambda found: len(found - {0}) <= 1)
        return image, self.map_values(raw, mask_path)

    def map_values(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Stored mask values -> class ids through a 256-entry table (one vectorised lookup)."""
        table = np.full(256, -1, dtype=np.int16)
        if self.value_map is not None:
            for value, cls in self.value_map.items():
                table[value] = cls
        elif self.n_classes == 1:
            table[:] = 1
            table[0] = 0
        else:
            table[: self.n_classes] = np.arange(self.n_classes)
            table[IGNORE_INDEX] = IGNORE_INDEX
        found = np.unique(raw)
        bad = found[table[found] < 0]
        if bad.size:
            if self.unmapped == "ignore":
                table[table < 0] = IGNORE_INDEX
            else:
                rule = (
                    f"dataset.value_map={self.value_map}" if self.value_map is not None
                    else f"class ids 0..{self.n_classes - 1} (n_classes={self.n_classes}) or {IGNORE_INDEX}"
                )
                raise DatasetError(
                    f"mask {path} holds values {bad.tolist()} (all values found: {found.tolist()}) that "
                    f"{rule} does not cover; add them to dataset.value_map, or set dataset.unmapped=ignore "
                    f"to leave them unscored ({IGNORE_INDEX})"
                )
        return table[raw].astype(np.uint8)

    def _load_resized(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        # The base's smooth binary resize would turn ignored (255) pixels into foreground: use nearest
        # neighbour whenever the mask can hold IGNORE_INDEX.
        image, mask = self.load_case(case_id)
        mapped_to_ignore = self.value_map is not None and IGNORE_INDEX in self.value_map.values()
        smooth = self.n_classes == 1 and self.unmapped != "ignore" and not mapped_to_ignore
        return resize_image(image, self.image_size), resize_mask(mask, self.image_size, smooth)

    # ----------------------------------------------------------------- splits

    def official_split(self, ids: list[str]) -> dict[str, list[str]] | None:
        parts = self.layout()
        if "" in parts:
            return None  # flat layout: the base's seeded split by id
        refuse_folds(self.folds, f"{self.root} is pre-split into folders (folds need the flat layout)")
        by_split = {s: sorted(i for i in ids if i.startswith(f"{s}/")) for s in SPLITS}
        if "val" not in parts:
            ratios = {"train": 1.0 - self.val_fraction, "val": self.val_fraction}
            carved = seeded_split(by_split["train"], ratios, self.split_seed)
            by_split["train"], by_split["val"] = carved["train"], carved["val"]
        return by_split
