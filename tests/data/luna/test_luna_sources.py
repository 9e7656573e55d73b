"""LUNA16's per-series cache follows its .mhd/.raw files, training says when annotations fall outside
their volume (as seg-prepare does), and the release has a fingerprint for provenance."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from luna_fixtures import ct_volume, uid, write_ct

from seg.data.luna import Luna16Data
from seg.data.luna.prepare import PrepareSettings, array_paths, load_index, prepare, scan_release

SETTINGS = PrepareSettings()


def touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def make(root: Path, cache: Path) -> Luna16Data:
    return Luna16Data(root=str(root), cache_dir=str(cache), val_stride=2, crop_size=32, window=40, epoch_samples=10)


def test_rewritten_series_is_converted_again(luna_root, tmp_path: Path, caplog) -> None:
    root, series = luna_root
    release = scan_release(root)
    entry, first, _ = prepare(release, sorted(release.series), cache_dir=tmp_path, settings=SETTINGS, progress=False)
    assert [f[0] for f in first[uid(103)].sources] == [f"{uid(103)}.mhd", f"{uid(103)}.raw"]
    s = series[2]
    image = sitk.ReadImage(str(s.path))
    hu = ct_volume(s.shape, s.nodules, seed=99)  # another scan under the same name: same size, other voxels
    write_ct(s.path, hu, image.GetOrigin(), image.GetDirection())
    touch_later(s.path.with_suffix(".raw"))
    with caplog.at_level(logging.INFO, logger="seg.data"):
        _, _, built = prepare(scan_release(root), sorted(release.series), cache_dir=tmp_path, settings=SETTINGS,
                              progress=False)
    assert built == 1 and "converting 1 series again" in caplog.text and uid(103) in caplog.text
    cached = np.load(array_paths(entry, uid(103))[0])
    np.testing.assert_array_equal(cached, np.clip(hu, -1000, 1000))
    assert load_index(entry, uid(103)).sources != first[uid(103)].sources  # type: ignore[union-attr]
    _, _, built = prepare(scan_release(root), sorted(release.series), cache_dir=tmp_path, settings=SETTINGS,
                          progress=False)
    assert built == 0


def test_training_warns_about_annotations_outside_their_volume(luna_root, tmp_path: Path, caplog) -> None:
    root, _ = luna_root
    with (root / "annotations.csv").open("a") as handle:  # uid(102) trains (val_stride=2 validates 101, 103, 105)
        handle.write(f"{uid(102)},900.0,900.0,900.0,5.0\n{uid(102)},-900.0,900.0,900.0,5.0\n")
    data = make(root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        train = data.dataset("train")
    records = [r.getMessage() for r in caplog.records if r.name == "seg.data"]
    assert len(records) == 1 and len(train) == 10
    assert records[0].startswith("luna16: 2 annotation(s) in annotations.csv lie outside their series' volume")
    assert f"(1 series: {uid(102)})" in records[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        data.dataset("val")  # other series, all inside: nothing more to say
    assert not [r for r in caplog.records if r.name == "seg.data"]


def test_fingerprint_covers_series_and_annotations(shared_luna, tmp_path: Path) -> None:
    root, series = shared_luna
    fingerprint = make(root, tmp_path).source_fingerprint()
    assert fingerprint is not None and fingerprint["files"] == 2 * len(series) + 1  # .mhd + .raw each, the CSV
    assert make(root, tmp_path).source_fingerprint() == fingerprint
    one = Luna16Data(root=str(root), cache_dir=str(tmp_path), max_series=1, val_stride=2, crop_size=32, window=40)
    assert one.source_fingerprint()["files"] == 3  # type: ignore[index]


def test_fingerprint_changes_with_the_annotations(luna_root, tmp_path: Path) -> None:
    root, _ = luna_root
    before = make(root, tmp_path).source_fingerprint()
    touch_later(root / "annotations.csv")
    assert make(root, tmp_path).source_fingerprint() != before
