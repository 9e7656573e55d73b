"""Reading the LUNA16 release: where the series are, the annotations, one CT volume, its nodule mask.

Release layout: `<root>/subset0..subset9/<seriesuid>.mhd` (+ `.raw` beside it) and
`<root>/annotations.csv` with columns `seriesuid,coordX,coordY,coordZ,diameter_mm` (world mm).
`candidates.csv` (non-nodule candidates) matters for classification only and is not read here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from seg.data.luna.geometry import Geometry
from seg.errors import DatasetError

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
LAYOUT = "<root>/subset0..subset9/<seriesuid>.mhd (+ .raw) and <root>/annotations.csv"
MIN_RADIUS = 2  # a box is at least 5 voxels wide along each axis, so tiny nodules keep a mask


def find_series(root: str | Path | None) -> dict[str, Path]:
    """Series uid -> .mhd path over every subset folder (a series may live in any of them)."""
    if root is None:
        raise DatasetError(f"dataset.root is not set: pass dataset.root=/path/to/luna16 holding {LAYOUT}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"LUNA16 root {base} does not exist or is not a folder: expected {LAYOUT}")
    found: dict[str, Path] = {}
    for path in sorted(base.glob("subset*/*.mhd")):
        uid = path.stem
        if uid in found:
            raise DatasetError(f"series {uid} is present twice: {found[uid]} and {path}; keep one of them")
        found[uid] = path
    if not found:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in base.iterdir())
        shown = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "") or "nothing"
        raise DatasetError(
            f"no CT series found under {base}: expected {LAYOUT}, found {shown}. "
            "Extract the subset archives into this folder"
        )
    return found


def read_annotations(path: str | Path) -> dict[str, np.ndarray]:
    """Series uid -> float64 (N, 4) array of (x, y, z, diameter_mm), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"annotations file {path} is missing: expected {LAYOUT}; download annotations.csv from LUNA16"
        )
    rows: dict[str, list[list[float]]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ANNOTATION_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{path} is not a LUNA16 annotations file: expected columns {','.join(ANNOTATION_COLUMNS)}, "
                f"found {','.join(header) or 'no header'} (missing {','.join(missing)})"
            )
        cols = [header.index(c) for c in ANNOTATION_COLUMNS]
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                uid = row[cols[0]].strip()
                values = [float(row[c]) for c in cols[1:]]
            except (IndexError, ValueError):
                raise DatasetError(
                    f"{path} line {line} is malformed: expected {','.join(ANNOTATION_COLUMNS)} with numbers "
                    f"in the last four, found {','.join(row)!r}"
                ) from None
            if not uid or not np.all(np.isfinite(values)):
                raise DatasetError(f"{path} line {line} has an empty series uid or a non-finite value: {row!r}")
            rows.setdefault(uid, []).append(values)
    return {uid: np.asarray(v, dtype=np.float64) for uid, v in rows.items()}


def read_ct(path: str | Path, hu_clip: tuple[float, float]) -> tuple[np.ndarray, Geometry]:
    """HU volume (index, row, col) as int16 clipped to `hu_clip`, and where it lies in patient space."""
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatasetError(
            f"cannot read CT series {path} (or the .raw beside it): {reason}. "
            "The file is corrupt or incomplete; re-extract it from the LUNA16 subset archive"
        ) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"{path} is not a 3-D single-channel CT volume (dimension {image.GetDimension()}, "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)); expected a LUNA16 .mhd series"
        )
    geometry = Geometry.from_image(image)
    hu = sitk.GetArrayFromImage(image)
    del image  # a LUNA volume is ~150 MB: hold one copy, not two
    if np.issubdtype(hu.dtype, np.floating) and not np.isfinite(hu).all():
        # Casting NaN to int16 gives an arbitrary value (often -32768, clipped to "air"): refuse instead.
        bad = int(hu.size - np.isfinite(hu).sum())
        raise DatasetError(
            f"CT series {path} holds {bad} NaN or infinite voxel(s) of {hu.size}; a CT volume needs finite HU "
            "values. Re-extract it from the LUNA16 subset archive, or remove the series"
        )
    # Integer bounds keep an int16 volume int16 (float bounds would promote it to float64).
    lo, hi = int(np.ceil(hu_clip[0])), int(np.floor(hu_clip[1]))
    if hu.dtype == np.int16:
        return np.clip(hu, lo, hi, out=hu), geometry
    return np.rint(np.clip(hu, lo, hi)).astype(np.int16), geometry


def _radius(line: np.ndarray, centre: int, threshold: float) -> int:
    """How far a box reaches along one axis: the first distance at which either side leaves tissue."""
    reach = min(centre, line.shape[0] - 1 - centre)
    steps = np.arange(1, reach + 1)
    inside = (line[centre + steps] > threshold) & (line[centre - steps] > threshold)
    run = int(np.cumprod(inside).sum())
    return max(run + 1, MIN_RADIUS)


def nodule_boxes(hu: np.ndarray, centres_irc: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean volume with one box per nodule, grown from its centre along index, row and column.

    Growing on both sides at once keeps a nodule touching the chest wall from running into it.
    Centres outside the volume are ignored (the caller reports them).
    """
    boxes = np.zeros(hu.shape, dtype=bool)
    shape = np.asarray(hu.shape)
    for centre in np.asarray(centres_irc, dtype=np.int64).reshape(-1, 3):
        if np.any(centre < 0) or np.any(centre >= shape):
            continue
        i, r, c = (int(v) for v in centre)
        lines = (hu[:, r, c], hu[i, :, c], hu[i, r, :])
        bounds = []
        for axis, line in enumerate(lines):
            radius = _radius(line, int(centre[axis]), threshold)
            lo = max(int(centre[axis]) - radius, 0)
            bounds.append(slice(lo, min(int(centre[axis]) + radius, int(shape[axis]) - 1) + 1))
        boxes[tuple(bounds)] = True
    return boxes


def nodule_mask(hu: np.ndarray, centres_irc: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 {0,1} mask: the grown boxes, trimmed to the voxels denser than `threshold`."""
    boxes = nodule_boxes(hu, centres_irc, threshold)
    boxes &= hu > threshold
    return boxes.view(np.uint8)
