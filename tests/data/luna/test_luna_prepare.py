"""The prepare step: per-series cache files, their index, reuse, invalidation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from luna_fixtures import sphere, uid

from seg.data.luna.prepare import PrepareSettings, array_paths, entry_dir, load_index, main, prepare, scan_release
from seg.errors import ConfigError, DatasetError

SETTINGS = PrepareSettings()


def _fail_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cache should have been used instead of reading a .mhd")


def test_scan_release_drops_series_not_on_disk(shared_luna) -> None:
    root, series = shared_luna
    release = scan_release(root)
    assert sorted(release.series) == sorted(s.uid for s in series)
    assert sorted(release.annotations) == sorted(s.uid for s in series if s.annotated)
    assert release.ignored == 2  # uid(900), uid(901)
    assert release.annotations[uid(101)].shape == (2, 3)


def test_no_annotated_series_on_disk(luna_root) -> None:
    root, _ = luna_root
    (root / "annotations.csv").write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid(900)},1,2,3,4\n")
    with pytest.raises(DatasetError, match=r"none of the 1 series named in .*annotations\.csv is on disk \(6 series"):
        scan_release(root)


def test_prepare_writes_memmappable_arrays_and_index(shared_luna, tmp_path: Path) -> None:
    root, series = shared_luna
    release = scan_release(root)
    entry, indices, built = prepare(release, sorted(release.series), cache_dir=tmp_path, settings=SETTINGS)
    assert built == 6 and sorted(indices) == sorted(release.series)
    assert entry == entry_dir(tmp_path, SETTINGS) and entry.parent == tmp_path
    assert json.loads((entry / "settings.json").read_text())["mask_threshold_hu"] == -700.0
    assert not list(entry.glob(".*tmp"))
    for s in series:
        index = indices[s.uid]
        assert index.shape == s.shape
        assert index.nodules == ([list(c) for c in s.nodules] if s.annotated else [])
        hu_file, mask_file = array_paths(entry, s.uid)
        hu, mask = np.load(hu_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")
        assert isinstance(hu, np.memmap) and hu.dtype == np.int16 and hu.shape == s.shape
        assert isinstance(mask, np.memmap) and mask.dtype == np.uint8
        expected = np.zeros(s.shape, dtype=bool)
        for centre in s.nodules if s.annotated else []:
            expected |= sphere(s.shape, centre)
        np.testing.assert_array_equal(mask.astype(bool), expected)
        assert index.positive_slices == np.flatnonzero(expected.any(axis=(1, 2))).tolist()
        assert load_index(entry, s.uid) == index
    # The flipped series: annotations in world mm still land on the right voxels.
    assert indices[uid(102)].geometry["direction"][0] == -1.0
    assert indices[uid(102)].positive_slices == [5, 6, 7]


def test_cache_is_reused_and_rebuilt_when_annotations_change(luna_root, tmp_path: Path, monkeypatch) -> None:
    root, series = luna_root
    release = scan_release(root)
    prepare(release, sorted(release.annotations), cache_dir=tmp_path, settings=SETTINGS)
    monkeypatch.setattr(sitk, "ReadImage", _fail_read)
    _, indices, built = prepare(scan_release(root), sorted(release.annotations), cache_dir=tmp_path, settings=SETTINGS)
    assert built == 0 and len(indices) == 5
    monkeypatch.undo()

    lines = (root / "annotations.csv").read_text().splitlines()
    (root / "annotations.csv").write_text("\n".join(line for line in lines if uid(106) not in line) + "\n")
    moved = scan_release(root)
    assert uid(106) not in moved.annotations
    _, indices, built = prepare(moved, sorted(moved.series), cache_dir=tmp_path, settings=SETTINGS)
    assert built == 2  # uid(106) lost its nodules; uid(105) was never prepared
    assert indices[uid(106)].nodules == [] and indices[uid(106)].positive_slices == []


def test_settings_key_the_cache_entry(tmp_path: Path) -> None:
    other = PrepareSettings.create([-1000, 1000], -600)
    assert entry_dir(tmp_path, other) != entry_dir(tmp_path, SETTINGS)
    assert entry_dir(tmp_path, PrepareSettings.create([-1000.0, 1000.0], -700)) == entry_dir(tmp_path, SETTINGS)
    assert entry_dir(tmp_path, PrepareSettings.create([-1024, 3000], -700)) != entry_dir(tmp_path, SETTINGS)
    with pytest.raises(ConfigError, match="hu_clip"):
        PrepareSettings.create([1000, -1000], -700)
    with pytest.raises(ConfigError, match="hu_clip"):
        PrepareSettings.create([-1000], -700)
    with pytest.raises(ConfigError, match="mask_threshold_hu=-1000 must lie inside"):
        PrepareSettings.create([-1000, 1000], -1000)


def test_corrupt_series_fails_prepare_with_its_name(luna_root, tmp_path: Path) -> None:
    root, series = luna_root
    raw = series[2].path.with_suffix(".raw")
    raw.write_bytes(b"\0" * 10)
    release = scan_release(root)
    with pytest.raises(DatasetError, match=uid(103)):
        prepare(release, sorted(release.series), cache_dir=tmp_path, settings=SETTINGS)
    entry = entry_dir(tmp_path, SETTINGS)
    assert load_index(entry, uid(103)) is None and not list(entry.glob(".*tmp"))


def test_cli_prepares_in_parallel_and_summarises(shared_luna, tmp_path: Path, capsys) -> None:
    root, _ = shared_luna
    cache = tmp_path / "cache"
    code = main(["--root", str(root), "--cache-dir", str(cache), "--workers", "2", "--annotated-only"])
    out = capsys.readouterr().out
    assert code == 0
    assert "5 series in" in out and "5 converted now" in out and "7 nodules" in out
    assert "2 annotated series not on disk ignored" in out
    entry = entry_dir(cache, SETTINGS)
    assert len(list(entry.glob("*.hu.npy"))) == 5

    code = main(["--root", str(root), "--cache-dir", str(cache), "--mask-threshold-hu", "-700",
                 "--hu-clip", "-1000", "1000"])
    out = capsys.readouterr().out
    assert code == 0 and "6 series in" in out and "1 converted now, 5 already cached" in out


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["--root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seg-prepare: error: LUNA16 root") and "\n" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--root", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seg-prepare: error: no CT series found under") and "\n" not in err
    assert main(["--root", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "--hu-clip", "5", "1"]) == 2
    assert "hu_clip" in capsys.readouterr().err
