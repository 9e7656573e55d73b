"""Writers of a small synthetic LUNA16 release written in the official layout, for the luna tests.

Volumes are int16 HU: air (-1000) outside a soft-tissue body (~0 HU) holding a lung (~-850 HU), with
bright spheres (+100 HU) where the annotations say. Mild seeded noise makes every patch unique (tests
locate crops by matching). Annotations are written in world mm via SimpleITK's own index->point
transform, so they do not depend on the code under test.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from omegaconf import OmegaConf

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
SPACING = (0.7, 0.7, 2.5)  # x, y, z mm
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z: not its own transpose
NODULE_RADIUS_MM = 3.5
SHAPE = (24, 48, 48)  # index, row, col

if not OmegaConf.has_resolver("seg.ctx_channels"):
    OmegaConf.register_new_resolver("seg.ctx_channels", lambda k: 2 * int(k) + 1)


@dataclass
class Series:
    uid: str
    subset: int
    nodules: list[tuple[int, int, int]]  # (index, row, col) centres
    direction: tuple[float, ...] = IDENTITY
    origin: tuple[float, float, float] = (-120.5, -80.25, -310.0)
    shape: tuple[int, int, int] = SHAPE
    annotated: bool = True
    xyz: list[tuple[float, float, float]] = field(default_factory=list)
    path: Path | None = None


def uid(n: int) -> str:
    return f"{UID_PREFIX}{n:030d}"


def sphere(
    shape: tuple[int, int, int], centre: tuple[int, int, int], radius_mm: float = NODULE_RADIUS_MM
) -> np.ndarray:
    sx, sy, sz = SPACING
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    i, r, c = centre
    return ((z - i) * sz) ** 2 + ((y - r) * sy) ** 2 + ((x - c) * sx) ** 2 <= radius_mm**2


def ct_volume(shape: tuple[int, int, int], nodules: list[tuple[int, int, int]], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    radius2 = (y - cy) ** 2 + (x - cx) ** 2
    hu = np.full(shape, -1000, dtype=np.int16)
    body = np.broadcast_to(radius2 <= (min(shape[1:]) / 2 - 1) ** 2, shape)
    lung = np.broadcast_to(radius2 <= (min(shape[1:]) / 2 - 6) ** 2, shape)
    hu[body] = rng.integers(-20, 40, size=int(body.sum()))
    hu[lung] = rng.integers(-880, -820, size=int(lung.sum()))
    for centre in nodules:
        hu[sphere(shape, centre)] = 100
    return hu


def write_ct(path: Path, hu: np.ndarray, origin: tuple[float, ...], direction: tuple[float, ...]) -> sitk.Image:
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))  # writes <uid>.raw beside the .mhd
    return image


def default_series() -> list[Series]:
    return [
        Series(uid(101), 0, [(10, 18, 20), (14, 30, 28)]),
        Series(uid(102), 0, [(6, 24, 24)], direction=FLIPPED, origin=(150.0, 160.5, -200.0)),
        Series(uid(103), 1, [(12, 20, 30)]),
        Series(uid(104), 1, [(2, 26, 20)], direction=FLIPPED, origin=(140.0, 150.0, -50.0)),
        Series(uid(105), 0, [], annotated=False),
        Series(uid(106), 1, [(20, 22, 26), (11, 27, 18)]),
    ]


def write_release(root: Path, series: list[Series] | None = None) -> list[Series]:
    """Write subset folders, annotations.csv (plus rows of series not on disk) and candidates.csv."""
    series = default_series() if series is None else series
    rows, candidates = [], []
    for k, s in enumerate(series):
        s.path = root / f"subset{s.subset}" / f"{s.uid}.mhd"
        image = write_ct(s.path, ct_volume(s.shape, s.nodules, seed=k), s.origin, s.direction)
        s.xyz = [image.TransformIndexToPhysicalPoint((c, r, i)) for i, r, c in s.nodules]
        if s.annotated:
            rows += [(s.uid, *p, 2 * NODULE_RADIUS_MM) for p in s.xyz]
        candidates += [(s.uid, *p, 1) for p in s.xyz]
        candidates.append((s.uid, *image.TransformIndexToPhysicalPoint((5, 5, 3)), 0))
    rows += [(uid(900), -50.0, 20.0, -100.0, 6.2), (uid(901), 10.0, 10.0, 10.0, 4.0)]  # not on disk
    with (root / "annotations.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        writer.writerows(rows)
    with (root / "candidates.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        writer.writerows(candidates)
    return series
