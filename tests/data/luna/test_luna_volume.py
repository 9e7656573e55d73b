"""Reading the release: series discovery, annotations, CT volumes and the grown nodule mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from luna_fixtures import FLIPPED, SHAPE, ct_volume, sphere, uid, write_ct

from seg.data.luna.volume import find_series, nodule_boxes, nodule_mask, read_annotations, read_ct
from seg.errors import DatasetError


def test_find_series_over_all_subsets(shared_luna) -> None:
    root, series = shared_luna
    found = find_series(root)
    assert sorted(found) == sorted(s.uid for s in series)
    assert found[uid(103)] == root / "subset1" / f"{uid(103)}.mhd"
    assert found[uid(101)].parent.name == "subset0"


def test_find_series_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset.root is not set"):
        find_series(None)
    with pytest.raises(DatasetError, match="does not exist"):
        find_series(tmp_path / "nowhere")
    (tmp_path / "subset0").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations.csv").write_text("seriesuid\n")
    expected = r"subset0\.\.subset9/<seriesuid>\.mhd.*found annotations\.csv, images/, subset0/"
    with pytest.raises(DatasetError, match=expected):
        find_series(tmp_path)
    write_ct(tmp_path / "subset0" / "a.mhd", ct_volume((2, 8, 8), []), (0, 0, 0), FLIPPED)
    write_ct(tmp_path / "subset3" / "a.mhd", ct_volume((2, 8, 8), []), (0, 0, 0), FLIPPED)
    with pytest.raises(DatasetError, match="present twice"):
        find_series(tmp_path)


def test_read_annotations_keeps_rows_per_series(shared_luna) -> None:
    root, series = shared_luna
    table = read_annotations(root / "annotations.csv")
    assert set(table) == {s.uid for s in series if s.annotated} | {uid(900), uid(901)}
    np.testing.assert_allclose(table[uid(101)][:, :3], np.array(series[0].xyz))
    assert table[uid(101)].shape == (2, 4)
    assert table[uid(900)][0].tolist() == [-50.0, 20.0, -100.0, 6.2]


def test_read_real_annotations(shared_data: Path) -> None:
    table = read_annotations(shared_data / "luna16" / "annotations.csv")
    assert len(table) == 601
    assert sum(len(rows) for rows in table.values()) == 1186
    first = table["1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"]
    assert first[0].tolist() == pytest.approx([-128.6994211, -175.3192718, -298.3875064, 5.651470635])
    assert all(np.all(rows[:, 3] > 0) for rows in table.values())


def test_annotation_errors(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    with pytest.raises(DatasetError, match="annotations file .* is missing"):
        read_annotations(path)
    path.write_text("seriesuid,x,y,z,diameter_mm\n1.2,1,2,3,4\n")
    expected = (r"expected columns seriesuid,coordX,coordY,coordZ,diameter_mm, found seriesuid,x,y,z,diameter_mm "
                r"\(missing coordX,coordY,coordZ\)")
    with pytest.raises(DatasetError, match=expected):
        read_annotations(path)
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,4\n\n1.2,1,two,3,4\n")
    with pytest.raises(DatasetError, match="line 4 is malformed"):
        read_annotations(path)
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3\n")
    with pytest.raises(DatasetError, match="line 2 is malformed"):
        read_annotations(path)
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,nan,3\n")
    with pytest.raises(DatasetError, match="non-finite"):
        read_annotations(path)


def test_read_ct_clips_to_int16(tmp_path: Path) -> None:
    hu = ct_volume((4, 8, 8), [])
    hu[0, 0, 0], hu[1, 1, 1] = -3024, 2500
    write_ct(tmp_path / "s.mhd", hu, (1.0, 2.0, 3.0), FLIPPED)
    volume, geometry = read_ct(tmp_path / "s.mhd", (-1000, 1000))
    assert volume.dtype == np.int16 and volume.shape == (4, 8, 8)
    assert volume[0, 0, 0] == -1000 and volume[1, 1, 1] == 1000
    np.testing.assert_array_equal(volume[2:], hu[2:])
    assert geometry.origin == (1.0, 2.0, 3.0) and geometry.direction == FLIPPED
    write_ct(tmp_path / "f.mhd", hu.astype(np.float32) + 0.25, (1.0, 2.0, 3.0), FLIPPED)  # other pixel type
    as_float, _ = read_ct(tmp_path / "f.mhd", (-1000.5, 999.5))
    assert as_float.dtype == np.int16 and as_float.min() == -1000 and as_float.max() == 999
    np.testing.assert_array_equal(as_float[2:], hu[2:])


def test_corrupt_series_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "subset0" / "s.mhd"
    write_ct(path, ct_volume((4, 8, 8), []), (0, 0, 0), FLIPPED)
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:100])  # truncated download
    with pytest.raises(DatasetError, match=r"cannot read CT series .*s\.mhd"):
        read_ct(path, (-1000, 1000))
    path.write_text("not a meta image header\n")
    with pytest.raises(DatasetError, match=r"cannot read CT series .*s\.mhd"):
        read_ct(path, (-1000, 1000))


def test_mask_grows_over_the_sphere_and_is_trimmed() -> None:
    centre = (10, 18, 20)
    hu = ct_volume(SHAPE, [centre])
    ball = sphere(SHAPE, centre)
    boxes = nodule_boxes(hu, np.array([centre]), -700)
    # Sphere radius 3.5 mm: 1 slice (2.5 mm) and 5 voxels (0.7 mm) each side; the box reaches the
    # first ring outside it (and at least 2 slices).
    index, rows, cols = np.nonzero(boxes)
    assert (index.min(), index.max()) == (8, 12)
    assert (rows.min(), rows.max()) == (12, 24)
    assert (cols.min(), cols.max()) == (14, 26)
    assert boxes[ball].all()
    assert (hu[boxes] <= -700).any()  # the box holds lung too ...
    mask = nodule_mask(hu, np.array([centre]), -700)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask.astype(bool), ball)  # ... which the HU test trims off


def test_mask_at_the_volume_edge_does_not_wrap() -> None:
    centre = (0, 24, 24)
    hu = ct_volume(SHAPE, [centre])
    mask = nodule_mask(hu, np.array([centre, (40, 0, 0), (-1, 5, 5)]), -700)  # last two: outside, ignored
    assert mask[:2].any() and not mask[2:].any()
    np.testing.assert_array_equal(mask.astype(bool), sphere(SHAPE, centre))


def test_mask_threshold_is_configurable() -> None:
    centre = (10, 24, 24)
    hu = ct_volume(SHAPE, [centre])
    # Below the lung's HU, the whole lung counts as tissue: the box grows to the lung's edge.
    mask = nodule_mask(hu, np.array([centre]), -900)
    assert mask.sum() > sphere(SHAPE, centre).sum() * 10
    assert not nodule_mask(hu, np.array([centre]), 200).any()
