"""LUNA16 items give the series' in-plane pixel spacing (row mm, column mm), from the prepared cache."""

from __future__ import annotations

from pathlib import Path

import luna_fixtures
import numpy as np
import pytest
from luna_fixtures import FLIPPED, ROTATED, Series, uid, write_release

from seg.data.luna import Luna16Data
from seg.data.luna.geometry import Geometry

ANISOTROPIC = (0.6, 0.9, 2.5)  # x (columns), y (rows), z mm: rows and columns differ, so order shows


def make(root: Path, cache: Path) -> Luna16Data:
    return Luna16Data(root=str(root), cache_dir=str(cache), val_stride=2, crop_size=32, window=40, epoch_samples=4)


@pytest.fixture
def anisotropic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three annotated series at ANISOTROPIC spacing (one with flipped, one with rotated axes)."""
    monkeypatch.setattr(luna_fixtures, "SPACING", ANISOTROPIC)  # write_ct and sphere read it when called
    root = tmp_path / "luna16"
    write_release(root, [
        Series(uid(201), 0, [(10, 18, 20)]),
        Series(uid(202), 0, [(8, 24, 24)], direction=FLIPPED, origin=(150.0, 160.5, -200.0)),
        Series(uid(203), 1, [(12, 22, 26)], direction=ROTATED),
    ])
    return root


def test_validation_slices_give_the_in_plane_spacing(anisotropic: Path, tmp_path: Path) -> None:
    val = make(anisotropic, tmp_path / "cache").dataset("val")
    assert len(val) > 0
    # y is the row axis, x the column axis; the direction matrix does not change the spacing per axis
    assert {val.pixel_spacing(i) for i in range(len(val))} == {(0.9, 0.6)}
    train = make(anisotropic, tmp_path / "cache").dataset("train")
    assert train.pixel_spacing(0) == (0.9, 0.6) and train.pixel_spacing(len(train) - 1) == (0.9, 0.6)


def test_spacing_comes_from_the_cache_on_a_later_start(anisotropic: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    make(anisotropic, tmp_path / "cache").dataset("val")

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached series index should have been used")

    monkeypatch.setattr("seg.data.luna.prepare.read_ct", no_read)
    val = make(anisotropic, tmp_path / "cache").dataset("val")
    assert val.pixel_spacing(0) == (0.9, 0.6)


def test_geometry_pixel_spacing_is_row_then_column() -> None:
    geometry = Geometry(origin=(0.0, 0.0, 0.0), spacing=(0.5, 0.8, 2.0), direction=tuple(np.eye(3).ravel()))
    assert geometry.pixel_spacing == (0.8, 0.5)
