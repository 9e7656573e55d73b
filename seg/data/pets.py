"""Oxford-IIIT Pets as released: `images/<Name>_<n>.jpg` and `annotations/trimaps/<Name>_<n>.png`
(1 pet, 2 background, 3 border), split by `annotations/trainval.txt` / `test.txt`.

The release is messy on purpose-free grounds: some `.jpg` files are GIFs or RGBA PNGs, some are grey or
CMYK, a few images are in no split file, and `images/` holds a few `.mat` files. Files are decoded by
content; files that cannot be used are skipped and reported together in one warning, so one bad file
never stops a 7,390-image run, and nothing is skipped silently. A file whose header reads but whose
data does not (a truncated JPEG) is found only while decoding: it is skipped then, recorded in the
cache, and named in the same warning at every start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seg.constants import IGNORE_INDEX
from seg.data.base import CachedArrayData, resize_image, resize_mask
from seg.data.cache import CachedArrays, SkipCase
from seg.data.checks import by_reason, summarise
from seg.data.io import UnreadableImage, read_label, read_rgb
from seg.data.split import seeded_split
from seg.errors import ConfigError, DatasetError

log = logging.getLogger("seg.data")

MODES = {"trimap": (3, ["pet", "background", "border"]), "binary": (1, ["pet"])}
BORDERS = {"pet": 1, "background": 0, "ignore": IGNORE_INDEX}
SPLIT_FILES = {"trainval": "trainval.txt", "test": "test.txt"}
SPLIT_COLUMNS = "<image name> <class id 1-37> <species 1-2> <breed id>"


def read_split_file(path: Path) -> list[str]:
    """Image names of one official split file; `#` lines (as in list.txt) and blank lines are skipped."""
    names = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            raise DatasetError(
                f"{path}, line {number}: expected 4 columns {SPLIT_COLUMNS}, found {line.strip()!r}. "
                "Use the annotations/ folder of the official annotations.tar.gz."
            )
        names.append(parts[0])
    return names


def files_with_suffix(folder: Path, suffix: str) -> dict[str, Path]:
    """Stem -> file; other files (the .mat files in images/) and hidden `._*` resource forks are not
    part of the release's data."""
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == suffix and not p.name.startswith(".")}


def header_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """(width, height) from the file header alone, or (None, reason): cheap enough for every startup."""
    try:
        with Image.open(path) as image:
            return image.size, ""
    except Exception as exc:  # PIL raises many types for broken files; all mean "unusable"
        return None, type(exc).__name__


class PetsData(CachedArrayData):
    """Oxford-IIIT Pets trimaps as 3 classes (`mode: trimap`: pet 0, background 1, border 2, the
    recipe) or as pet vs background (`mode: binary`, the border joins `border`: pet | background |
    ignore). The official test split is kept; validation is carved from trainval with a seed."""

    name = "pets"

    def __init__(
        self,
        *,
        root: str | None,
        image_size: int | Sequence[int] = 128,
        mode: str = "trimap",
        border: str = "pet",
        val_fraction: float = 0.1,
        n_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        **common: Any,
    ) -> None:
        """`common`: CachedArrayData's other arguments (split_seed, cache_dir, in_channels); not
        `split`, as the official test split is kept and validation is carved with val_fraction."""
        self.refuse(type(self), common, "split")
        if mode not in MODES:
            raise ConfigError(f"dataset.mode={mode!r} is not a Pets mode: expected one of {list(MODES)}")
        if border not in BORDERS:
            raise ConfigError(f"dataset.border={border!r}: expected one of {list(BORDERS)}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"dataset.val_fraction={val_fraction!r}: expected a number in [0, 1)")
        expected_n, expected_names = MODES[mode]
        n_classes = expected_n if n_classes is None else int(n_classes)
        names = list(expected_names if class_names is None else class_names)
        if n_classes != expected_n or len(names) != len(expected_names):
            override = f"dataset.n_classes={expected_n} dataset.class_names=[{','.join(expected_names)}]"
            raise ConfigError(
                f"dataset.mode={mode} needs {expected_n} class(es) {expected_names}, but the config has "
                f"n_classes={n_classes} and class_names={names}. Add: dataset.mode={mode} {override}"
            )
        super().__init__(root=root, image_size=image_size, n_classes=n_classes, class_names=names, **common)
        self.require("in_channels", self.in_channels, 3)
        self.mode = mode
        self.border = border
        self.val_fraction = float(val_fraction)
        self._membership: dict[str, str] | None = None
        self._listing_skipped: dict[str, list[str]] = {}
        self._dirs: tuple[Path, Path, Path] | None = None

    def cache_fields(self) -> dict[str, Any]:
        return {**super().cache_fields(), "mode": self.mode, "border": self.border}

    # ----------------------------------------------------------------- layout

    def _folders(self) -> tuple[Path, Path, Path]:
        """(images, annotations, trimaps), checked once: case_sources and load_case ask for every case."""
        if self._dirs is None:
            self._dirs = self._find_folders()
        return self._dirs

    def _find_folders(self) -> tuple[Path, Path, Path]:
        root = self.root
        layout = "images/*.jpg, annotations/trimaps/*.png, annotations/trainval.txt and annotations/test.txt"
        if root is None or not root.is_dir():
            raise DatasetError(
                f"Oxford-IIIT Pets root not found: {root}. Set dataset.root to the folder holding {layout} "
                "(images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/)."
            )
        images, annotations = root / "images", root / "annotations"
        for folder in (images, annotations, annotations / "trimaps"):
            if not folder.is_dir():
                found = sorted(p.name for p in root.iterdir())[:20]
                raise DatasetError(
                    f"Oxford-IIIT Pets: missing folder {folder}. Expected under {root}: {layout}; "
                    f"found {found}. Extract both images.tar.gz and annotations.tar.gz into dataset.root."
                )
        return images, annotations, annotations / "trimaps"

    def _split_membership(self) -> dict[str, str]:
        """Image name -> 'trainval' or 'test', from the official split files."""
        if self._membership is None:
            _, annotations, _ = self._folders()
            membership: dict[str, str] = {}
            for split, filename in SPLIT_FILES.items():
                path = annotations / filename
                if not path.is_file():
                    raise DatasetError(
                        f"Oxford-IIIT Pets: official split file {path} not found; it comes with "
                        "annotations.tar.gz (lines: " + SPLIT_COLUMNS + ")."
                    )
                for name in read_split_file(path):
                    if membership.get(name, split) != split:
                        raise DatasetError(
                            f"Oxford-IIIT Pets: {name} is listed in both trainval.txt and test.txt under "
                            f"{annotations}; the official files never overlap, re-extract annotations.tar.gz."
                        )
                    membership[name] = split
            self._membership = membership
        return self._membership

    def list_cases(self) -> list[str]:
        images_dir, _, trimaps_dir = self._folders()
        membership = self._split_membership()
        images = files_with_suffix(images_dir, ".jpg")
        trimaps = files_with_suffix(trimaps_dir, ".png")
        skipped: dict[str, list[str]] = {}

        def skip(reason: str, name: str) -> None:
            skipped.setdefault(reason, []).append(name)

        valid = []
        for name in sorted(images):
            if name not in trimaps:
                skip("image without trimap", images[name].name)
                continue
            if name not in membership:
                skip("image in neither trainval.txt nor test.txt", images[name].name)
                continue
            size, why = header_size(images[name])
            if size is None:
                skip("unreadable image", f"{images[name].name} ({why})")
                continue
            tsize, why = header_size(trimaps[name])
            if tsize is None:
                skip("unreadable trimap", f"{trimaps[name].name} ({why})")
            elif tsize != size:
                skip("trimap size differs from image", f"{name} (image {size}, trimap {tsize})")
            else:
                valid.append(name)
        for name in sorted(set(trimaps) - set(images)):
            skip("trimap without image", trimaps[name].name)
        listed_missing = sorted(n for n in membership if n not in images)
        if listed_missing:
            skipped["listed in a split file but no image"] = listed_missing
        self._listing_skipped = skipped  # warned with the files decoding skips, in report()
        if not valid:
            raise DatasetError(
                f"Oxford-IIIT Pets: no usable image under {self.root} (need images/<name>.jpg with "
                f"annotations/trimaps/<name>.png, listed in trainval.txt or test.txt). Skipped:\n{summarise(skipped)}"
            )
        return valid

    def report(self, arrays: CachedArrays) -> None:
        """The one warning: files skipped while listing and those that failed to decode."""
        skipped = {reason: list(names) for reason, names in self._listing_skipped.items()}
        for reason, names in by_reason(arrays.skipped).items():
            skipped.setdefault(reason, []).extend(names)
        if skipped:
            total = sum(len(v) for v in skipped.values())
            log.warning(
                "Oxford-IIIT Pets under %s: skipped %d file(s)/entries:\n%s", self.root, total, summarise(skipped)
            )

    # ------------------------------------------------------------------ cases

    def case_sources(self, case_id: str) -> list[Path]:
        images_dir, _, trimaps_dir = self._folders()
        return [images_dir / f"{case_id}.jpg", trimaps_dir / f"{case_id}.png"]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        images_dir, _, trimaps_dir = self._folders()
        image = read_rgb(images_dir / f"{case_id}.jpg")
        trimap_path = trimaps_dir / f"{case_id}.png"
        trimap = read_label(trimap_path)
        if trimap.shape != image.shape[:2]:
            raise DatasetError(f"{trimap_path}: trimap is {trimap.shape}, its image is {image.shape[:2]}")
        bad = np.setdiff1d(np.unique(trimap), [1, 2, 3])
        if bad.size:
            raise DatasetError(
                f"{trimap_path}: trimap values {bad.tolist()} found, expected only 1 (pet), 2 (background), "
                "3 (border). Re-extract annotations.tar.gz."
            )
        return image, self.lookup()[trimap]

    def lookup(self) -> np.ndarray:
        """Trimap value -> class id, as a 256-entry table (applied to a whole trimap at once)."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        if self.mode == "trimap":
            table[[1, 2, 3]] = [0, 1, 2]
        else:
            table[[1, 2, 3]] = [1, 0, BORDERS[self.border]]
        return table

    def _load_resized(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            image, mask = self.load_case(case_id)
        except UnreadableImage as exc:  # the header read at listing, the data does not: skip, as documented
            kind = "unreadable trimap" if exc.path.suffix == ".png" else "unreadable image"
            raise SkipCase(kind, f"{exc.path.name} ({exc.reason})") from None
        # The base's smooth binary resize would turn ignored (255) border pixels into pet: use
        # nearest neighbour whenever the mask can hold IGNORE_INDEX.
        smooth = self.n_classes == 1 and self.border != "ignore"
        return resize_image(image, self.image_size), resize_mask(mask, self.image_size, smooth)

    def official_split(self, ids: list[str]) -> dict[str, list[str]]:
        membership = self._split_membership()
        trainval = [i for i in ids if membership.get(i) == "trainval"]
        test = sorted(i for i in ids if membership.get(i) == "test")
        ratios = {"train": 1.0 - self.val_fraction, "val": self.val_fraction}
        carved = seeded_split(trainval, ratios, self.split_seed)
        return {"train": carved["train"], "val": carved["val"], "test": test}
