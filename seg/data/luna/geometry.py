"""Patient coordinates (x, y, z in mm) <-> voxel coordinates (index, row, col) of a CT volume.

SimpleITK places voxel (i, j, k) (x-, y-, z-index) at `origin + direction @ (spacing * (i, j, k))`.
NumPy arrays from `GetArrayFromImage` are ordered (z, y, x), i.e. (index, row, col), so the voxel
coordinates here are the SimpleITK index reversed. The direction matrix is solved, not transposed or
ignored: LUNA16 series exist with flipped axes, and an identity assumption would put masks on the wrong
side of the patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where a volume sits in patient space; all three in SimpleITK's (x, y, z) order."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major 3x3, as SimpleITK's GetDirection()

    @classmethod
    def from_image(cls, image: object) -> Geometry:
        return cls(
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[attr-defined]
            spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[attr-defined]
            direction=tuple(float(v) for v in image.GetDirection()),  # type: ignore[attr-defined]
        )

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(row mm, column mm) of a slice: rows run along SimpleITK's y index and columns along x
        (arrays are (index, row, col) = (z, y, x)). Spacing belongs to the index axes, so a flipped or
        rotated direction matrix does not change it."""
        return (self.spacing[1], self.spacing[0])

    def to_dict(self) -> dict[str, list[float]]:
        return {"origin": list(self.origin), "spacing": list(self.spacing), "direction": list(self.direction)}


def _as_points(points: Sequence[float] | np.ndarray) -> tuple[np.ndarray, bool]:
    arr = np.asarray(points, dtype=np.float64)
    single = arr.ndim == 1
    return arr.reshape(-1, 3), single


def world_to_voxel(
    xyz: Sequence[float] | np.ndarray, geometry: Geometry, *, rounded: bool = True
) -> np.ndarray:
    """(x, y, z) mm -> (index, row, col); one point (3,) or many (N, 3).

    Rounded to the nearest voxel (halves up, as SimpleITK's TransformPhysicalPointToIndex) unless
    `rounded=False`, which gives the continuous position.
    """
    points, single = _as_points(xyz)
    offset = points - np.asarray(geometry.origin)
    ijk = np.linalg.solve(geometry.matrix, offset.T).T / np.asarray(geometry.spacing)
    irc = ijk[:, ::-1]
    if rounded:
        irc = np.floor(irc + 0.5).astype(np.int64)
    return irc[0] if single else irc


def voxel_to_world(irc: Sequence[float] | np.ndarray, geometry: Geometry) -> np.ndarray:
    """(index, row, col) -> (x, y, z) mm; one point (3,) or many (N, 3)."""
    points, single = _as_points(irc)
    ijk = points[:, ::-1] * np.asarray(geometry.spacing)
    xyz = ijk @ geometry.matrix.T + np.asarray(geometry.origin)
    return xyz[0] if single else xyz
