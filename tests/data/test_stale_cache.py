"""Cached rows follow their source files: a replaced or truncated image, mask, stack, DICOM or label
CSV is decoded again (only the cases that read it, into the same entry, with the count in the log),
an interrupted or concurrent refresh stays correct, and the dataset fingerprint follows the same stats.
Fixtures are the readers' official layouts, written by their own test modules."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_folder import write_pairs
from test_isbi import write_stacks
from test_ph2 import write_ph2
from test_siim import box, write_dicom
from test_siim_stage2 import TRAIN, write_stage2

import seg.data.sources
from seg.data.cache import build_or_load
from seg.data.folder import FolderData
from seg.data.isbi import ISBI2012Data
from seg.data.ph2 import IMAGES_DIR, PH2Data, case_files
from seg.data.rle import rle_encode
from seg.data.siim import SIIMData
from seg.data.sources import SourceStats
from seg.data.synthetic import SyntheticData
from seg.errors import DatasetError


def touch_later(path: Path) -> None:
    """Give an edited file a later mtime, as an edit a moment after the first run would: on a file
    system with a coarse clock the rewrite could otherwise keep the old time."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def ph2(root: Path, cache: Path, **kwargs: object) -> PH2Data:
    return PH2Data(root=str(root), image_size=16, cache_dir=str(cache), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def ph2_root(tmp_path: Path) -> Path:
    return write_ph2(tmp_path / "PH2Dataset", n_cases=4)


def count_loads(monkeypatch: pytest.MonkeyPatch, reader: type, delay: float = 0.0) -> list[str]:
    calls: list[str] = []
    original = reader.load_case

    def load_case(self: object, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        calls.append(case_id)
        time.sleep(delay)
        return original(self, case_id)

    monkeypatch.setattr(reader, "load_case", load_case)
    return calls


def invert_image(root: Path, case: str) -> None:
    path = case_files(root / IMAGES_DIR, case)[0]
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    touch_later(path)


def test_replaced_image_is_decoded_again_alone(ph2_root, tmp_path, monkeypatch, caplog) -> None:
    first = ph2(ph2_root, tmp_path / "cache").arrays
    before, row = np.array(first.images), first.ids.index("IMD003")
    invert_image(ph2_root, "IMD003")
    calls = count_loads(monkeypatch, PH2Data)
    with caplog.at_level(logging.INFO, logger="seg.data"):
        again = ph2(ph2_root, tmp_path / "cache").arrays
    assert calls == ["IMD003"] and again.path == first.path
    assert "ph2: 1 case decoded again" in caplog.text and "IMD003" in caplog.text
    changed = [i for i in range(len(again.ids)) if not np.array_equal(again.images[i], before[i])]
    assert changed == [row]
    np.testing.assert_array_equal(again.images[row], ph2(ph2_root, tmp_path / "fresh").arrays.images[row])
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg.data"):
        ph2(ph2_root, tmp_path / "cache").arrays
    assert calls == [] and "decoded again" not in caplog.text  # the new stats were recorded


def test_root_through_a_symlink_reuses_the_rows(ph2_root, tmp_path, monkeypatch) -> None:
    """The key holds the resolved root and rows record paths relative to the sources' common folder,
    so another spelling of the same root neither makes a new entry nor decodes again."""
    first = ph2(ph2_root, tmp_path / "cache").arrays
    (tmp_path / "link").symlink_to(ph2_root)
    calls = count_loads(monkeypatch, PH2Data)
    assert ph2(tmp_path / "link", tmp_path / "cache").arrays.path == first.path and calls == []


def test_truncated_mask_after_the_first_run_stops_with_its_name(ph2_root, tmp_path) -> None:
    ph2(ph2_root, tmp_path).arrays
    mask = case_files(ph2_root / IMAGES_DIR, "IMD004")[1]
    mask.write_bytes(mask.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"cannot read image .*IMD004_lesion.bmp"):
        ph2(ph2_root, tmp_path).arrays


def test_interrupted_refresh_is_redone(ph2_root, tmp_path, monkeypatch, caplog) -> None:
    ph2(ph2_root, tmp_path).arrays
    invert_image(ph2_root, "IMD002")

    def interrupted(self: PH2Data, case_id: str) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(PH2Data, "load_case", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ph2(ph2_root, tmp_path).arrays
    calls = count_loads(monkeypatch, PH2Data)
    with caplog.at_level(logging.INFO, logger="seg.data"):
        ph2(ph2_root, tmp_path).arrays
    assert calls == ["IMD002"] and "1 case decoded again" in caplog.text


def test_two_processes_refreshing_one_entry_decode_once(ph2_root, tmp_path, monkeypatch) -> None:
    """Two loads of one stale entry at the same moment (threads here; the lock is per open file, so
    threads contend as processes do): one decodes the changed case, the other waits and reuses it."""
    ph2(ph2_root, tmp_path).arrays
    invert_image(ph2_root, "IMD005")
    calls = count_loads(monkeypatch, PH2Data, delay=0.2)  # slow enough for both to see the row stale
    start, results = threading.Barrier(2), []

    def load() -> None:
        data = ph2(ph2_root, tmp_path)
        data.source_stats()
        start.wait()
        results.append(np.array(data.arrays.images))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["IMD005"] and len(results) == 2
    np.testing.assert_array_equal(results[0], results[1])


def test_vanished_source_makes_its_row_stale(tmp_path) -> None:
    files = {c: tmp_path / f"{c}.npy" for c in ("a", "b", "c")}
    for k, path in enumerate(files.values()):
        np.save(path, np.full((2, 3), k, np.uint8))

    def load(case: str) -> tuple[np.ndarray, np.ndarray]:
        mask = np.load(files[case])  # raises FileNotFoundError for a vanished file
        return mask[..., None], mask

    stats = lambda: SourceStats.collect(list(files), lambda c: [files[c]])  # noqa: E731
    build_or_load(tmp_path / "cache", "toy", {}, list(files), load, sources=stats())
    files["b"].unlink()
    with pytest.raises(FileNotFoundError):  # decoded again, not served from the old row
        build_or_load(tmp_path / "cache", "toy", {}, list(files), load, sources=stats())


def test_isbi_rewritten_stack_decodes_every_slice_again(tmp_path, caplog) -> None:
    write_stacks(tmp_path / "isbi")
    ISBI2012Data(root=str(tmp_path / "isbi"), image_size=32, val_slices=2).arrays
    new = np.random.default_rng(7).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "isbi" / "train-volume.tif", new)
    touch_later(tmp_path / "isbi" / "train-volume.tif")
    with caplog.at_level(logging.INFO, logger="seg.data"):
        arrays = ISBI2012Data(root=str(tmp_path / "isbi"), image_size=32, val_slices=2).arrays
    assert "isbi2012: 6 cases decoded again" in caplog.text
    np.testing.assert_array_equal(arrays.images[..., 0], new)


def test_siim_dicom_and_label_csv_are_sources(tmp_path, caplog) -> None:
    tree = write_stage2(tmp_path / "siim")
    root, case = tree["root"], tree["train"][0]
    make = lambda: SIIMData(root=str(root), image_size=64, split={"train": 1.0})  # noqa: E731
    make().arrays
    pixels = np.full((64, 64), 77, np.uint8)
    touch_later(write_dicom(root, case, pixels, folder=TRAIN))
    with caplog.at_level(logging.INFO, logger="seg.data"):
        arrays = make().arrays
    assert "siim: 1 case decoded again" in caplog.text
    np.testing.assert_array_equal(arrays.images[arrays.ids.index(case), ..., 0], pixels)

    csv = root / "stage_2_train.csv"  # the masks of every DICOM case come from it
    csv.write_text(csv.read_text().replace(f"{case},-1", f"{case},{rle_encode(box(0, 8, 0, 8))}"))
    touch_later(csv)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg.data"):
        arrays = make().arrays
    assert f"siim: {len(arrays.ids)} cases decoded again" in caplog.text
    np.testing.assert_array_equal(arrays.masks[arrays.ids.index(case)], box(0, 8, 0, 8))


def test_folder_replaced_mask(tmp_path) -> None:
    write_pairs(tmp_path / "d", ["a", "b", "c"])
    make = lambda: FolderData(root=str(tmp_path / "d"), image_size=[10, 14], split={"train": 1.0})  # noqa: E731
    assert make().arrays.masks[1].any()
    mask = tmp_path / "d" / "masks" / "b.png"
    Image.fromarray(np.zeros((10, 14), np.uint8)).save(mask)
    touch_later(mask)
    arrays = make().arrays
    assert not arrays.masks[1].any() and arrays.masks[0].any()


def test_fingerprint_follows_the_source_stats(ph2_root, tmp_path, monkeypatch) -> None:
    data = ph2(ph2_root, tmp_path)
    stats: list[str] = []
    original = seg.data.sources.stat_file
    monkeypatch.setattr(seg.data.sources, "stat_file", lambda path: stats.append(path) or original(path))
    data.arrays
    fingerprint = data.source_fingerprint()
    assert len(stats) == 8  # one stat per source file, shared by the staleness check and the fingerprint
    monkeypatch.undo()
    assert fingerprint is not None and fingerprint["files"] == 8 and len(fingerprint["sha256"]) == 64
    for root in (ph2_root, ph2_root / IMAGES_DIR, ph2_root.parent):  # nothing changed, any root form
        assert ph2(root, tmp_path).source_fingerprint() == fingerprint
    touch_later(case_files(ph2_root / IMAGES_DIR, "IMD003")[1])
    changed = ph2(ph2_root, tmp_path).source_fingerprint()
    assert changed is not None and changed["files"] == 8 and changed["sha256"] != fingerprint["sha256"]


def test_fingerprint_of_generated_and_file_readers(tmp_path) -> None:
    assert SyntheticData(n_images=4, image_size=16).source_fingerprint() is None
    write_stacks(tmp_path / "isbi")
    fingerprint = ISBI2012Data(root=str(tmp_path / "isbi"), image_size=32, val_slices=2).source_fingerprint()
    assert fingerprint is not None and fingerprint["files"] == 2  # both stacks, shared by every slice
