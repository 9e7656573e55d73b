"""Reading image files by content (not by extension), with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seg.errors import DatasetError


def share_like_umask(path: Path, directory: bool = False) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (always 0600/0700) the permissions the user's
    umask gives new files, so teammates can read shared caches and checkpoints as with any file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}. Re-download or remove this file.") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 whatever the file holds (GIF, palette, grey, RGBA, CMYK, 16-bit)."""
    image = _open(Path(path))
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_gray(path: str | Path) -> np.ndarray:
    """HxW uint8 single-channel image (for X-rays and other grey inputs)."""
    image = _open(Path(path))
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return read_rgb(path)[..., 0]
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_label(path: str | Path) -> np.ndarray:
    """HxW uint8 label values exactly as stored (palette indices, 0/255, 1-bit -> 0/255)."""
    image = _open(Path(path))
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)
