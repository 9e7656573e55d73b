"""seg-predict's inputs: which files to predict and how each is decoded, the way the training readers
decode theirs (grey or RGB by the model's input channels, DICOM through SimpleITK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from seg.data.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_dicom_gray, read_gray, read_rgb
from seg.errors import DatasetError

INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


def find_inputs(path: Path, recursive: bool) -> list[Path]:
    """The image files to predict: `path` itself, or those in the folder (and below, if recursive)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"input={path} does not exist; give an image file or a folder of images")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
    if not files:
        where = "in or below" if recursive else "directly in"
        raise DatasetError(f"no images {where} {path} (looked for {', '.join(INPUT_SUFFIXES)})")
    return files


def read_input(path: Path, channels: int) -> np.ndarray:
    """HxWxC uint8, as the training readers decode: grey for 1-channel models, RGB for 3."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        gray = read_dicom_gray(path)
        return gray[..., None] if channels == 1 else np.repeat(gray[..., None], 3, axis=-1)
    return read_gray(path)[..., None] if channels == 1 else read_rgb(path)


def page_count(path: Path) -> int:
    """Frames in a multi-page file (a TIFF stack); 1 for anything PIL cannot count."""
    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except (OSError, ValueError, SyntaxError):
        return 1


def multi_page(files: list[Path]) -> list[str]:
    """Names of the files holding several pages (only their first page is predicted)."""
    return [f.name for f in files if f.suffix.lower() in (".tif", ".tiff", ".gif") and page_count(f) > 1]
