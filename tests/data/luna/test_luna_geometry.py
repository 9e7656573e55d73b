"""World (x, y, z mm) <-> voxel (index, row, col), checked against SimpleITK's own transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from luna_fixtures import FLIPPED, IDENTITY, ROTATED, SPACING, ct_volume, write_ct

from seg.data.luna.geometry import Geometry, voxel_to_world, world_to_voxel


@pytest.mark.parametrize("direction", [IDENTITY, FLIPPED, ROTATED], ids=["identity", "flipped", "rotated"])
def test_matches_simpleitk_on_written_image(tmp_path: Path, direction: tuple[float, ...]) -> None:
    path = tmp_path / "ct.mhd"
    write_ct(path, ct_volume((6, 10, 12), []), (-120.5, 33.0, -310.0), direction)
    image = sitk.ReadImage(str(path))
    geometry = Geometry.from_image(image)
    assert geometry.direction == pytest.approx(direction)

    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, n, 40) for n in (12, 10, 6)], axis=1)  # x, y, z index
    expected_xyz = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in ijk])
    np.testing.assert_allclose(voxel_to_world(ijk[:, ::-1], geometry), expected_xyz, atol=1e-9)

    points = expected_xyz + rng.uniform(-0.3, 0.3, expected_xyz.shape)  # off-grid, < half a voxel
    sitk_index = np.array([image.TransformPhysicalPointToIndex(p.tolist()) for p in points])
    np.testing.assert_array_equal(world_to_voxel(points, geometry), sitk_index[:, ::-1])
    sitk_cont = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
    np.testing.assert_allclose(world_to_voxel(points, geometry, rounded=False), sitk_cont[:, ::-1], atol=1e-9)


def test_round_trip_with_flipped_axes() -> None:
    geometry = Geometry(origin=(150.0, 160.5, -200.0), spacing=SPACING, direction=FLIPPED)
    irc = np.array([[0.0, 0.0, 0.0], [6.0, 24.0, 24.0], [23.0, 47.0, 1.0]])
    xyz = voxel_to_world(irc, geometry)
    # Flipped x/y: a larger column index lies further towards -x.
    assert xyz[1, 0] == pytest.approx(150.0 - 24 * 0.7)
    assert xyz[1, 1] == pytest.approx(160.5 - 24 * 0.7)
    assert xyz[1, 2] == pytest.approx(-200.0 + 6 * 2.5)
    np.testing.assert_allclose(world_to_voxel(xyz, geometry, rounded=False), irc, atol=1e-9)
    np.testing.assert_array_equal(world_to_voxel(xyz, geometry), irc.astype(np.int64))


def test_single_point_keeps_its_shape() -> None:
    geometry = Geometry(origin=(1.0, 2.0, 3.0), spacing=(0.5, 0.5, 2.0), direction=IDENTITY)
    irc = world_to_voxel((2.0, 3.0, 7.0), geometry)
    assert irc.shape == (3,) and irc.dtype == np.int64
    assert irc.tolist() == [2, 2, 2]
    assert voxel_to_world(irc, geometry).tolist() == pytest.approx([2.0, 3.0, 7.0])
    assert geometry.to_dict()["spacing"] == [0.5, 0.5, 2.0]
