"""SIIM-ACR Pneumothorax: chest X-rays with run-length encoded pneumothorax masks.

Two on-disk layouts are read (`layout: auto` picks whichever is present, DICOM first):

- dicom: the Kaggle release, `dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm` (stage-1
  train) and `dicom-images-test/...` (stage-1 test); ids are the SOPInstanceUIDs (file stems). Labels:
  `stage_2_train.csv` (stage 2, `ImageId,EncodedPixels`: stage-1 train AND test images) or else
  `train-rle.csv` (stage 1, `ImageId, EncodedPixels`: train images only, so dicom-images-test is then
  unused); with both, the stage-2 file wins as it labels more images, and the choice is logged.
  `-1` = no pneumothorax; one row per region. `stage_2_images/` (unlabelled stage-2 test) is never
  read. Both CSVs use SIIM's relative RLE (evidence in seg.data.rle); `rle: absolute` reads a copy
  re-encoded with absolute starts. Images without a row, and rows without an image, are skipped with
  one warning. Cases are split by image with `split` ratios and `split_seed`.
- png: the common converted copy, `<split>/images|inputs/*.png` with masks of the same stem in
  `<split>/masks|labels/` (0/255 or 0/1). With two or more of the folders train/val/test present they
  are the split (ids `<split>/<stem>`); with one, it is cut by `split` ratios.

Empty masks dominate the release (about 78 %), so `positive_oversample` repeats images with
pneumothorax in the training split only; validation and test keep the true prevalence, which the
`val/dice_kaggle` metric (an empty prediction on an empty mask scores 1) depends on.

DICOM cases note their PixelSpacing, scaled to `image_size`, in the cache: every split's Dataset
offers `pixel_spacing(index)` (seg.data.spacing), None for PNG cases and DICOMs without the tag.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seg.data.base import CachedArrayData, check_split
from seg.data.io import IMAGE_SUFFIXES, read_dicom_gray, read_gray, read_label
from seg.data.rle import DECODERS, RLE_FORMS, read_rle_csv
from seg.data.spacing import SPACING_NOTE, SpacedArrayDataset, dicom_pixel_spacing, served_spacing
from seg.data.split import SPLITS, refuse_folds
from seg.errors import ConfigError, DatasetError

log = logging.getLogger("seg.data")

DICOM_DIRS = ("dicom-images-train", "dicom-images-test")  # stage-1 train and test images
RLE_CSV = "train-rle.csv"  # stage 1: labels dicom-images-train
STAGE2_CSV = "stage_2_train.csv"  # stage 2: labels dicom-images-train and dicom-images-test
CSVS = (STAGE2_CSV, RLE_CSV)  # preference order
IMAGE_DIRS = ("images", "inputs")
MASK_DIRS = ("masks", "labels")
LAYOUTS = ("auto", "dicom", "png")
EXPECTED = (
    f"expected either the Kaggle DICOM layout ({DICOM_DIRS[0]}/<study>/<series>/<SOPInstanceUID>.dcm "
    f"with {RLE_CSV}, or the stage-2 release: {STAGE2_CSV} with {DICOM_DIRS[0]}/ and {DICOM_DIRS[1]}/) "
    f"or the PNG layout (<split>/images|inputs/*.png with <split>/masks|labels/*.png, split folders among "
    f"{list(SPLITS)})"
)
NO_STAGE1_IMAGES = (
    " (stage_2_images/ is the unlabelled stage-2 test set; the labelled images are the stage-1 DICOM "
    "folders, which the stage-2 download lacks: get them from a mirror of the stage-1 release)"
)


def _names(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


def _first_dir(parent: Path, names: Sequence[str]) -> Path | None:
    return next((parent / n for n in names if (parent / n).is_dir()), None)


def _label_csv(root: Path) -> Path | None:
    """stage_2_train.csv before train-rle.csv: it labels the stage-1 test images too."""
    return next((root / n for n in CSVS if (root / n).is_file()), None)


class SIIMData(CachedArrayData):
    """SIIM-ACR pneumothorax segmentation (1 grey channel, binary mask)."""

    name = "siim"
    in_channels = 1
    n_classes = 1
    class_names = ["pneumothorax"]
    kaggle_metric = True  # the engine reports val/dice_kaggle (empty-vs-empty scores 1)
    mask_expected = "0/255 or 0/1 (PNG masks)"
    mask_treatment = (
        "values above 127 are read as pneumothorax (in a mask whose maximum is 1: the 1s); the SIIM reader "
        "has no dataset.value_map, so save these masks as 0/255 if that is not what they mean"
    )

    def __init__(
        self,
        *,
        root: str,
        layout: str = "auto",
        image_size: int | Sequence[int] = 128,
        positive_oversample: float = 1.0,
        rle: str = "relative",
        **common: Any,
    ) -> None:
        """`common`: CachedArrayData's other arguments (split, split_seed, cache_dir, ...)."""
        super().__init__(root=root, image_size=image_size, **common)
        self.require("in_channels", self.in_channels, 1)
        self.require("n_classes", self.n_classes, 1)
        if layout not in LAYOUTS:
            raise ConfigError(f"siim: dataset.layout={layout!r} is unknown; expected one of {list(LAYOUTS)}")
        if not float(positive_oversample) >= 1.0:
            raise ConfigError(
                f"siim: dataset.positive_oversample={positive_oversample!r} must be >= 1.0 "
                f"(1.0 = no oversampling, 2.0 = images with pneumothorax appear twice as often)"
            )
        if rle not in RLE_FORMS:
            raise ConfigError(f"siim: dataset.rle={rle!r} is unknown; expected one of {list(RLE_FORMS)}")
        self.layout = layout
        self.rle = rle
        self.positive_oversample = float(positive_oversample)
        self._images: dict[str, Path] = {}
        self._rles: dict[str, list[tuple[int, str]]] = {}
        self._masks: dict[str, Path] = {}
        self._folder_split: dict[str, list[str]] | None = None
        self._ids_digest = ""
        self._csv = Path()  # the label CSV of the DICOM layout, set by list_cases

    # ---- layout -------------------------------------------------------------------------------
    def resolved_layout(self) -> str:
        if self.root is None or not self.root.is_dir():
            raise DatasetError(f"siim: dataset.root {self.root} is not a folder; {EXPECTED}. Set dataset.root=...")
        found = [n for n in (*DICOM_DIRS, *CSVS) if (self.root / n).exists()]
        has_png = any(_first_dir(self.root / s, IMAGE_DIRS) for s in SPLITS)
        if self.layout == "dicom" or (self.layout == "auto" and found):
            has_images = any((self.root / n).is_dir() for n in DICOM_DIRS)
            missing = [f"a label CSV ({STAGE2_CSV} or {RLE_CSV})"] if _label_csv(self.root) is None else []
            missing += [] if has_images else [f"an image folder ({DICOM_DIRS[0]}/ or {DICOM_DIRS[1]}/)"]
            if missing:
                hint = NO_STAGE1_IMAGES if not has_images and (self.root / "stage_2_images").is_dir() else ""
                raise DatasetError(f"siim: {self.root} lacks {' and '.join(missing)}{hint}; {EXPECTED}")
            return "dicom"
        if self.layout == "png" or has_png:
            if not has_png:
                raise DatasetError(f"siim: no <split>/images or <split>/inputs folder under {self.root}; {EXPECTED}")
            return "png"
        raise DatasetError(f"siim: nothing recognisable under {self.root}; {EXPECTED}")

    def list_cases(self) -> list[str]:
        layout = self.resolved_layout()
        root = Path(str(self.root))  # resolved_layout checked it is a folder
        ids = self._list_dicom(root) if layout == "dicom" else self._list_png(root)
        if not ids:
            raise DatasetError(f"siim: no image with a mask found under {self.root}; {EXPECTED}")
        self._ids_digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        return ids

    def _list_dicom(self, root: Path) -> list[str]:
        csv = self._csv = _label_csv(root) or root / RLE_CSV  # resolved_layout checked one exists
        folders = [n for n in DICOM_DIRS if (root / n).is_dir()]
        unused = [n for n in CSVS if n != csv.name and (root / n).is_file()]
        if csv.name == RLE_CSV and DICOM_DIRS[1] in folders:
            folders.remove(DICOM_DIRS[1])
            unused.append(f"{DICOM_DIRS[1]}/ ({RLE_CSV} has no labels for it; add {STAGE2_CSV} to use it)")
        note = f"; not used: {', '.join(unused)}" if unused else ""
        log.info("siim: labels from %s, images from %s%s", csv.name, " and ".join(f"{n}/" for n in folders), note)
        try:
            self._rles = read_rle_csv(csv)
        except DatasetError as exc:
            raise DatasetError(f"siim: {exc}; {EXPECTED}") from None
        images: dict[str, Path] = {}
        for path in (p for n in folders for p in sorted((root / n).rglob("*.dcm"))):
            if path.stem in images:
                raise DatasetError(
                    f"siim: two DICOMs share the SOPInstanceUID {path.stem}: {images[path.stem]} and {path}; "
                    f"remove the duplicate"
                )
            images[path.stem] = path
        if not images:
            searched = " or ".join(f"{n}/" for n in folders or DICOM_DIRS[:1])
            raise DatasetError(f"siim: no .dcm file under {searched} in {root}; {EXPECTED}")
        self._images = images
        no_image = sorted(set(self._rles) - set(images))
        no_row = sorted(set(images) - set(self._rles))
        if no_image or no_row:
            log.warning(
                "siim: skipping %d image id(s) listed in %s without a DICOM under %s [%s] and %d DICOM(s) "
                "without a row in %s [%s]",
                len(no_image), csv.name, "/".join(folders), _names(no_image), len(no_row), csv.name, _names(no_row),
            )
        return sorted(set(images) & set(self._rles))

    def _list_png(self, root: Path) -> list[str]:
        folders = [s for s in SPLITS if _first_dir(root / s, IMAGE_DIRS)]
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        unmatched: list[str] = []
        self._images, self._masks = {}, {}
        for split in folders:
            image_dir = _first_dir(root / split, IMAGE_DIRS) or root / split / IMAGE_DIRS[0]
            mask_dir = _first_dir(root / split, MASK_DIRS)
            masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} if mask_dir else {}
            for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                case = f"{split}/{path.stem}"
                if path.stem not in masks:
                    unmatched.append(case)
                    continue
                self._images[case], self._masks[case] = path, masks[path.stem]
                by_split[split].append(case)
        if unmatched:
            log.warning(
                "siim: skipping %d image(s) without a mask of the same name in <split>/%s [%s]",
                len(unmatched), "|".join(MASK_DIRS), _names(unmatched),
            )
        self._folder_split = by_split if len(folders) >= 2 else None
        return sorted(c for ids in by_split.values() for c in ids)

    # ---- decoding -----------------------------------------------------------------------------
    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._masks:
            image = read_gray(self._images[case_id])
            label = read_label(self._masks[case_id])
            self.note_mask_values(case_id, label, lambda found: found <= {0, 255} or found <= {0, 1})
            if label.shape != image.shape:
                raise DatasetError(
                    f"siim: mask {self._masks[case_id]} is {label.shape} but its image is {image.shape}; "
                    f"masks must match their image's size"
                )
            return image, (label > (0 if label.max() <= 1 else 127)).astype(np.uint8)
        image = read_dicom_gray(self._images[case_id])
        height, width = image.shape
        spacing = dicom_pixel_spacing(self._images[case_id])  # once, at decoding: the cache keeps it
        if spacing is not None:
            self._notes[case_id] = {SPACING_NOTE: list(served_spacing(spacing, image.shape, self.image_size))}
        mask = np.zeros((height, width), dtype=np.uint8)
        decode = DECODERS[self.rle]
        for line, rle in self._rles[case_id]:
            try:
                np.maximum(mask, decode(rle, height, width), out=mask)
            except DatasetError as exc:
                csv, other = _label_csv(Path(str(self.root))), next(f for f in RLE_FORMS if f != self.rle)
                raise DatasetError(
                    f"siim: {csv} line {line} (ImageId {case_id}): {exc}. Rows are read as {self.rle} RLE; if the "
                    f"whole file is {other} RLE set dataset.rle={other}, otherwise fix or remove this row."
                ) from None
        return image, mask

    def case_sources(self, case_id: str) -> list[Path]:
        if case_id in self._masks:
            return [self._images[case_id], self._masks[case_id]]
        # Every DICOM case's mask comes from the label CSV: an edited CSV decodes them again.
        return [self._images[case_id], self._csv]

    def cache_fields(self) -> dict[str, Any]:
        fields = super().cache_fields()
        fields.update(layout=self.resolved_layout(), ids=self._ids_digest)
        csv = _label_csv(Path(str(self.root))) if fields["layout"] == "dicom" else None
        if csv is not None:  # which label file and how it is decoded change the masks; edits to the
            fields.update(csv=[csv.name], rle=self.rle)  # file are caught per row (case_sources)
            fields.update(spacing=1)  # entries from before spacing notes would serve every case in px
        return fields

    # ---- splits -------------------------------------------------------------------------------
    def official_split(self, ids: list[str]) -> dict[str, list[str]] | None:
        if self._folder_split is None:
            return None
        refuse_folds(self.folds, f"siim: the PNG layout's split folders under {self.root} are the split")
        return {s: sorted(v) for s, v in self._folder_split.items()}

    def fold_strata(self, ids: list[str]) -> dict[str, bool] | None:
        # DICOM layout: positive = any RLE row other than -1, known from the CSV without decoding.
        return {c: any(r.strip() != "-1" for _, r in self._rles[c]) for c in ids} if self._rles else None

    def positives(self, indices: Sequence[int]) -> np.ndarray:
        """Which cached cases have any foreground, read in chunks so RAM stays small."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.zeros(len(idx), dtype=bool)
        masks = self.arrays.masks
        for begin in range(0, len(idx), 512):
            chunk = idx[begin : begin + 512]
            out[begin : begin + 512] = masks[chunk].reshape(len(chunk), -1).any(axis=1)
        return out

    def dataset(self, split: str) -> SpacedArrayDataset:
        """One Dataset per split, with pixel_spacing(index) from the cached notes."""
        check_split(split)
        if split not in self._datasets:
            self._datasets[split] = SpacedArrayDataset(self.arrays, self._indices(split))
        return self._datasets[split]

    def _indices(self, split: str) -> np.ndarray:
        """Cached rows of a split. The train split repeats positive images `positive_oversample` times
        on average: every positive appears floor(f) times and a seeded fraction f - floor(f) once more."""
        position = {case: i for i, case in enumerate(self.arrays.ids)}
        base = np.array([position[c] for c in self.split_ids()[split]], dtype=np.int64)
        if split != "train" or self.positive_oversample == 1.0:
            return base
        positive = base[self.positives(base)]
        whole = int(np.floor(self.positive_oversample))
        extra_n = int(round((self.positive_oversample - whole) * len(positive)))
        rng = np.random.default_rng(self.split_seed)
        extra = rng.choice(positive, size=extra_n, replace=False) if extra_n else positive[:0]
        return np.sort(np.concatenate([base, *([positive] * (whole - 1)), extra]))
