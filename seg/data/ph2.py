"""PH2 dermoscopy release (200 cases): one RGB image and one binary lesion mask per case.

Official layout (note the spaces in the folder name):
  PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp   24-bit RGB BMP
  PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp       1-bit BMP mask
  PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_roi/...                        colour regions, unused
The release has no official split, so cases are split by id with the seeded split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from seg.data.base import CachedArrayData
from seg.data.io import read_label, read_rgb
from seg.errors import DatasetError

IMAGES_DIR = "PH2 Dataset images"
CASE_PATTERN = re.compile(r"IMD\d+")
LAYOUT = (
    f"<root>/{IMAGES_DIR}/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp and "
    f"<root>/{IMAGES_DIR}/IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp, with root the unpacked PH2Dataset "
    f"folder (or the '{IMAGES_DIR}' folder itself)"
)


def _preview(folder: Path, k: int = 6) -> str:
    """A few entries of a folder, so an error shows what the user actually pointed at."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "it is empty"
    more = f", ... ({len(names)} entries)" if len(names) > k else ""
    return "it holds " + ", ".join(repr(n) for n in names[:k]) + more


def case_files(images_dir: Path, case_id: str) -> tuple[Path, Path]:
    """(image, lesion mask) paths of one case in the official layout."""
    case = images_dir / case_id
    return (
        case / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp",
        case / f"{case_id}_lesion" / f"{case_id}_lesion.bmp",
    )


class PH2Data(CachedArrayData):
    """PH2 images resized to `image_size` (anti-aliased) with binary lesion masks (kept binary)."""

    name = "ph2"
    in_channels = 3
    n_classes = 1
    class_names = ["lesion"]
    mask_expected = "0 and 255 (the release's 1-bit lesion BMPs)"
    mask_treatment = (
        "every non-zero value is read as lesion (PH2 has no dataset.value_map): if some of these values "
        "mean something else, restore the masks from the release or save them as 0/255"
    )

    def __init__(self, *, root: str | None, **common: Any) -> None:
        """`common`: CachedArrayData's arguments (image_size, split, split_seed, cache_dir, ...)."""
        super().__init__(root=root, **common)
        self.require("in_channels", self.in_channels, 3)
        self.require("n_classes", self.n_classes, 1)
        self._images_dir: Path | None = None

    @property
    def images_dir(self) -> Path:
        """The folder holding the IMDnnn cases: `root/PH2 Dataset images`, `root/PH2Dataset/PH2 Dataset
        images`, or root itself. Looked up once: case_sources asks for it for every case."""
        if self._images_dir is None:
            self._images_dir = self._find_images_dir()
        return self._images_dir

    def _find_images_dir(self) -> Path:
        if self.root is None:
            raise DatasetError(f"dataset.root is not set: point it at the unpacked PH2 release, laid out as {LAYOUT}")
        if not self.root.is_dir():
            what = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise DatasetError(f"PH2 root {self.root} {what}: expected the unpacked release laid out as {LAYOUT}")
        # The release folder itself, the folder holding it (as seg-download unpacks it), or the cases.
        for nested in (self.root / IMAGES_DIR, self.root / "PH2Dataset" / IMAGES_DIR):
            if nested.is_dir():
                return nested
        return self.root

    def cache_fields(self) -> dict[str, Any]:
        # Key on the case folder, so both accepted forms of `root` share one cache entry.
        return {**super().cache_fields(), "root": str(self.images_dir.resolve())}

    def list_cases(self) -> list[str]:
        folder = self.images_dir
        ids = sorted(p.name for p in folder.iterdir() if p.is_dir() and CASE_PATTERN.fullmatch(p.name))
        if not ids:
            raise DatasetError(
                f"no PH2 case folders (IMDnnn) found in {folder}: expected {LAYOUT}; {_preview(folder)}"
            )
        for case_id in ids:
            missing = [p for p in case_files(folder, case_id) if not p.is_file()]
            if missing:
                raise DatasetError(
                    f"PH2 case {case_id} is incomplete: missing {', '.join(str(p) for p in missing)} "
                    "(every case needs its dermoscopic image and its lesion mask); restore the file from "
                    "the release or remove the case folder"
                )
        return ids

    def case_sources(self, case_id: str) -> list[Path]:
        return list(case_files(self.images_dir, case_id))

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = case_files(self.images_dir, case_id)
        image = read_rgb(image_path)
        raw = read_label(mask_path)
        self.note_mask_values(case_id, raw, lambda found: found <= {0, 255})
        mask = (raw > 0).astype(np.uint8)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"PH2 case {case_id}: lesion mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but "
                f"image {image_path.name} is {image.shape[1]}x{image.shape[0]} (width x height); they must "
                "match: re-extract this case from the release"
            )
        return image, mask
