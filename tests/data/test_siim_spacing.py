"""SIIM's DICOM layout: PixelSpacing (0028,0030) read once per case into the cache, scaled to the
served size; PNG cases and DICOMs without the tag give None."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from seg.data.siim import SIIMData
from seg.data.spacing import dicom_pixel_spacing, served_spacing
from tests.data.test_siim import UID, write_dicom, write_png_split

ALL_SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


def write_spaced(path: Path, pixels: np.ndarray, tag: str) -> None:
    """Set PixelSpacing as the SIIM release has it (its CR files carry 0028,0030, not 0018,1164)."""
    image = sitk.GetImageFromArray(pixels)
    image.SetMetaData("0008|0060", "CR")
    image.SetMetaData("0028|0030", tag)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


@pytest.fixture
def spaced_root(tmp_path: Path) -> tuple[Path, list[str]]:
    """4 DICOMs of 64 rows x 48 columns at 0.5 mm (rows) x 0.25 mm (columns), no pneumothorax."""
    root, rng = tmp_path / "siim", np.random.default_rng(0)
    ids = [UID.format(2000 + i, 880000 + i) for i in range(4)]
    for case in ids:
        pixels = rng.integers(0, 256, (64, 48), dtype=np.uint8)
        path = write_dicom(root, case, pixels)  # the release's folders; spacing set below
        write_spaced(path, pixels, "0.5\\0.25")
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "".join(f"{c}, -1\n" for c in ids))
    return root, ids


def test_spacing_is_scaled_to_the_served_size(spaced_root: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = spaced_root
    data = SIIMData(root=str(root), image_size=32, split=ALL_SPLITS, cache_dir=str(tmp_path / "cache"))
    for split in ("train", "val", "test"):
        ds = data.dataset(split)
        # 0.5 mm x 64 rows / 32 = 1.0 mm; 0.25 mm x 48 columns / 32 = 0.375 mm
        assert [ds.pixel_spacing(i) for i in range(len(ds))] == [(1.0, 0.375)] * len(ds)
    notes = json.loads((data.arrays.path / "rows.json").read_text())["notes"]
    assert notes[ids[0]] == {"pixel_spacing": [1.0, 0.375]}  # recorded with the row


def test_a_later_run_reads_the_spacing_from_the_cache(spaced_root: tuple[Path, list[str]], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = spaced_root
    settings = dict(root=str(root), image_size=32, split=ALL_SPLITS, cache_dir=str(tmp_path / "cache"))
    SIIMData(**settings).dataset("val")

    def no_read(path: object) -> None:
        raise AssertionError("the cached note should have been used")

    monkeypatch.setattr("seg.data.siim.dicom_pixel_spacing", no_read)
    assert SIIMData(**settings).dataset("val").pixel_spacing(0) == (1.0, 0.375)


def test_no_tag_or_png_gives_none(tmp_path: Path) -> None:
    root = tmp_path / "siim"
    ids = [UID.format(3000 + i, 890000 + i) for i in range(4)]
    for case in ids:  # test_siim's writer: SimpleITK writes ImagerPixelSpacing 1\1, no PixelSpacing
        write_dicom(root, case, np.zeros((64, 64), np.uint8))
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "".join(f"{c}, -1\n" for c in ids))
    val = SIIMData(root=str(root), image_size=32, split=ALL_SPLITS, cache_dir=str(tmp_path / "c1")).dataset("val")
    assert val.pixel_spacing(0) is None
    write_png_split(tmp_path / "png", "train", [f"x{i}" for i in range(4)], "images", "masks")
    png = SIIMData(root=str(tmp_path / "png"), image_size=32, split=ALL_SPLITS, cache_dir=str(tmp_path / "c2"))
    assert png.dataset("val").pixel_spacing(0) is None


@pytest.mark.parametrize(("tag", "expected"), [("0.168\\0.168 ", (0.168, 0.168)), ("0\\0", None),
                                               ("abc\\1", None), ("0.5", None)])
def test_pixel_spacing_tag_parsing(tmp_path: Path, tag: str, expected: tuple[float, float] | None) -> None:
    path = tmp_path / "a.dcm"
    write_spaced(path, np.zeros((8, 8), np.uint8), tag)
    assert dicom_pixel_spacing(path) == expected


def test_served_spacing() -> None:
    assert served_spacing((0.5, 0.5), (64, 64), (32, 32)) == (1.0, 1.0)
    assert served_spacing((0.168, 0.168), (1024, 1024), (1024, 1024)) == (0.168, 0.168)


def test_real_dicom_sample_spacing(shared_data: Path) -> None:
    source = next((shared_data / "siim-sample" / "dicom-images-train").rglob("*.dcm"))
    assert dicom_pixel_spacing(source) == (0.168, 0.168)  # the release's CR files: 1024 px at 0.168 mm
