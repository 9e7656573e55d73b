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


def safe_name(name: str) -> str:
    """A case id as a file name or TensorBoard tag: letters, digits and `._-`, the rest `_`."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")


def scale_to_uint8(values: np.ndarray, source: str | Path) -> np.ndarray:
    """Min-max scale any numeric array to 0-255 over the whole array (a 12-bit X-ray or a 16-bit
    stack would otherwise be clipped; slices of one stack stay comparable). uint8 passes as is.
    Non-finite values make the scaling meaningless, so they are an error naming `source`."""
    if values.dtype == np.uint8:
        return values
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int((~finite).sum())
        raise DatasetError(
            f"{source} holds {bad} NaN or infinite value(s) of {values.size}; an image needs finite pixel "
            "values. Fix or remove this file."
        )
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


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
        grey = scale_to_uint8(np.asarray(image), path)
        return np.repeat(grey[..., None], 3, axis=-1)
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


def read_dicom_gray(path: str | Path) -> np.ndarray:
    """HxW uint8 from a single-frame grey DICOM.

    SimpleITK >= 2.1 (ITK >= 5.2) already converts MONOCHROME1 to MONOCHROME2 while reading, so the
    array is always "low = dark" and is not inverted again here. Other pixel types are min-max
    rescaled to 0-255.
    """
    import SimpleITK as sitk  # imported here: most commands never read a DICOM

    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"cannot read DICOM {path}: {first}. Re-download or remove this file.") from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DatasetError(f"DICOM {path} has pixel array shape {array.shape}; expected one grey 2-D frame")
    return scale_to_uint8(array, path)
