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


class UnreadableImage(DatasetError):
    """An image file no decoder can read (missing, truncated, not an image): `path` and the decoder's
    `reason`, so a reader that may skip such files (Pets) can name them briefly."""

    def __init__(self, path: Path, reason: str, message: str) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
FLOAT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _open(path: Path) -> Image.Image | np.ndarray:
    """A loaded PIL image, or for a TIFF that PIL cannot decode (multi-channel float or 16-bit) the
    array tifffile reads; by content, so a TIFF named .jpg is read the same way."""
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found", f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if _is_tiff(path):
            return _read_tiff(path)
        raise _unreadable(path, exc, "image") from None


def _unreadable(path: Path, exc: BaseException, what: str) -> UnreadableImage:
    message = f"cannot read {what} {path}: {exc}. Re-download or remove this file."
    return UnreadableImage(path, f"{type(exc).__name__}: {exc}", message)


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in TIFF_MAGIC
    except OSError:
        return False


def _read_tiff(path: Path) -> np.ndarray:
    """HxW or HxWxC array of a one-image TIFF, colour samples last whatever the planar layout."""
    import tifffile  # imported here: only TIFFs that PIL cannot read need it

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except Exception as exc:  # tifffile raises many types for damaged files; all mean "unreadable"
        raise _unreadable(path, exc, "TIFF") from None
    if "S" in axes:  # samples per pixel (colour channels): last, as PIL gives them
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    keep = [i for i, (n, a) in enumerate(zip(array.shape, axes)) if n > 1 or a in "YXS"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes not in ("YX", "YXS") or (axes == "YXS" and array.shape[-1] not in (1, 3)):
        raise DatasetError(
            f"{path} holds an array of shape {array.shape} (TIFF axes {axes}); expected one 2-D image, "
            "grey or RGB. Save each image as its own file."
        )
    return array[..., 0] if axes == "YXS" and array.shape[-1] == 1 else array


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 whatever the file holds (GIF, palette, grey, RGBA, CMYK, 16-bit, float TIFF)."""
    image = _open(Path(path))
    if isinstance(image, np.ndarray):  # one scale for all channels keeps their balance
        values = scale_to_uint8(image, path)
        return values if values.ndim == 3 else np.repeat(values[..., None], 3, axis=-1)
    if image.mode in FLOAT_MODES:
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
    if isinstance(image, np.ndarray) or image.mode in FLOAT_MODES:
        values = scale_to_uint8(np.asarray(image), path)
        if values.ndim == 3:  # an RGB float or 16-bit TIFF: PIL's luma, as for 8-bit colour files
            values = np.asarray(Image.fromarray(values).convert("L"), dtype=np.uint8)
        return values
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_label(path: str | Path) -> np.ndarray:
    """HxW uint8 label values exactly as stored (palette indices, 0/255, 1-bit -> 0/255)."""
    image = _open(Path(path))
    if isinstance(image, np.ndarray):
        raise DatasetError(
            f"mask {path} is a {image.dtype} TIFF with {image.shape[-1] if image.ndim == 3 else 1} channel(s); "
            "expected one channel of whole label values 0-255 (8-bit grey, palette or 1-bit)"
        )
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image).astype(np.uint8)
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise DatasetError(f"mask {path} holds NaN or infinite values; expected whole label values 0-255")
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
