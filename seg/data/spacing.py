"""Pixel spacing (mm) of served items, for readers whose sources know it (DICOM, CT volumes).

The optional dataset API: a torch Dataset of a split may offer `pixel_spacing(index)` -> (row mm,
column mm) of item `index` at the resolution it is served at, or None where the source has none.
seg-eval's surface metrics are then in mm (seg.inference.report); a Dataset without the method, or
one that gives None for any item, is measured in pixels.

Cached readers record the spacing once per case, as a note of its row in rows.json (seg.data.cache),
under SPACING_NOTE, so a later run reads no source file for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seg.data.base import ArrayDataset
from seg.surface import valid_spacing

SPACING_NOTE = "pixel_spacing"  # key of a cached row's note: [row mm, column mm] as served
PIXEL_SPACING_TAG = "0028|0030"  # DICOM PixelSpacing: "row\column" mm between pixel centres

Spacing = tuple[float, float]


def served_spacing(native: Spacing, native_shape: Sequence[int], served_shape: Sequence[int]) -> Spacing:
    """The spacing after resizing `native_shape` pixels to `served_shape`: a pixel then covers
    native_size / served_size native pixels along each axis."""
    return (native[0] * native_shape[0] / served_shape[0], native[1] * native_shape[1] / served_shape[1])


def dicom_pixel_spacing(path: str | Path) -> Spacing | None:
    """PixelSpacing (0028,0030) of a 2-D DICOM from its header only (no pixel decoding), or None.

    The tag is read rather than SimpleITK's GetSpacing(): that gives (1, 1) both for a file without
    any spacing and for one at 1 mm, and for CR/DX it prefers ImagerPixelSpacing (0018,1164), the
    spacing at the detector, which is not the patient-calibrated one (and which SimpleITK's own writer
    fills with 1\\1 by default)."""
    import SimpleITK as sitk  # imported here: most commands never read a DICOM

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # the pixels were read already; an unreadable header just has no spacing
        return None
    if not reader.HasMetaDataKey(PIXEL_SPACING_TAG):
        return None
    return valid_spacing(reader.GetMetaData(PIXEL_SPACING_TAG).strip().split("\\"))


class SpacedArrayDataset(ArrayDataset):
    """An ArrayDataset whose cached rows may carry a spacing note (SPACING_NOTE)."""

    def pixel_spacing(self, index: int) -> Spacing | None:
        note = self.arrays.notes.get(self.ids[index]) or {}
        return valid_spacing(note.get(SPACING_NOTE))
