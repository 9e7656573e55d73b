"""SIIM-ACR reader on fixtures in the Kaggle DICOM + RLE layout and the converted PNG layout."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from seg.data.io import read_dicom_gray
from seg.data.rle import rle_encode
from seg.data.siim import SIIMData
from seg.errors import ConfigError, DatasetError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UID = "1.2.276.0.7230010.3.1.4.8323329.{}.1517875160.{}"


def write_dicom(
    root: Path, sop: str, pixels: np.ndarray, monochrome1: bool = False, folder: str = "dicom-images-train"
) -> Path:
    """A CR DICOM in the release's folder layout: <folder>/<study>/<series>/<sop>.dcm, where folder is
    dicom-images-train or dicom-images-test (stage-1 train / test)."""
    study, series = sop.replace(".4.", ".2.", 1), sop.replace(".4.", ".3.", 1)
    path = root / folder / study / series / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(pixels)
    for tag, value in (("0008|0018", sop), ("0020|000d", study), ("0020|000e", series), ("0008|0060", "CR")):
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)
    if monochrome1:  # the writer always stores MONOCHROME2; patch the tag (same length) afterwards
        path.write_bytes(path.read_bytes().replace(b"MONOCHROME2", b"MONOCHROME1"))
    return path


def box(y0: int, y1: int, x0: int, x1: int, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


@pytest.fixture
def kaggle_root(tmp_path: Path) -> dict:
    """8 images on disk (3 positive, one with two regions), plus one CSV row without an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "siim"
    ids = [UID.format(1000 + i, 870000 + i) for i in range(9)]
    pixels = {}
    for case in ids[:8]:
        pixels[case] = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        write_dicom(root, case, pixels[case])
    masks = {
        ids[0]: [box(5, 20, 10, 30), box(40, 50, 40, 60)],  # two regions: two rows
        ids[3]: [box(0, 64, 60, 64)],
        ids[5]: [box(30, 33, 2, 5)],
    }
    lines = ["ImageId, EncodedPixels"]
    for case in ids[:7] + ids[8:]:  # ids[7] has no row, ids[8] has no image
        lines += [f"{case}, {rle_encode(m)}" for m in masks.get(case, [])] or [f"{case}, -1"]
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "ids": ids, "pixels": pixels, "masks": masks}


def make(root: Path, **kwargs) -> SIIMData:
    settings = {"image_size": 64, "split": {"train": 0.5, "val": 0.25, "test": 0.25}} | kwargs
    return SIIMData(root=str(root), **settings)


def test_dicom_layout_reads_images_and_union_masks(kaggle_root: dict, caplog: pytest.LogCaptureFixture) -> None:
    ids = kaggle_root["ids"]
    data = make(kaggle_root["root"])
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        arrays = data.arrays
    assert arrays.ids == sorted(ids[:7])
    warnings = [r for r in caplog.records if r.name == "seg.data"]
    assert len(warnings) == 1
    assert "1 image id(s)" in warnings[0].getMessage() and ids[8] in warnings[0].getMessage()
    assert "1 DICOM(s)" in warnings[0].getMessage() and ids[7] in warnings[0].getMessage()
    i0 = arrays.ids.index(ids[0])
    assert arrays.images.shape == (7, 64, 64, 1) and arrays.images.dtype == np.uint8
    np.testing.assert_array_equal(arrays.images[i0, ..., 0], kaggle_root["pixels"][ids[0]])
    np.testing.assert_array_equal(arrays.masks[i0], np.maximum(*kaggle_root["masks"][ids[0]]))
    np.testing.assert_array_equal(arrays.masks[arrays.ids.index(ids[3])], kaggle_root["masks"][ids[3]][0])
    assert arrays.masks[arrays.ids.index(ids[1])].sum() == 0
    assert data.kaggle_metric is True and SIIMData.kaggle_metric is True
    assert (data.in_channels, data.n_classes, data.class_names) == (1, 1, ["pneumothorax"])


def test_split_is_seeded_and_items_are_tensors(kaggle_root: dict) -> None:
    split = make(kaggle_root["root"]).split_ids()
    assert {k: len(v) for k, v in split.items()} == {"train": 3, "val": 2, "test": 2}
    assert split == make(kaggle_root["root"]).split_ids()
    assert split != make(kaggle_root["root"], split_seed=7).split_ids()
    item = make(kaggle_root["root"]).dataset("val")[0]
    assert tuple(item["image"].shape) == (1, 64, 64) and tuple(item["mask"].shape) == (64, 64)
    assert set(item["mask"].unique().tolist()) <= {0, 1} and "weight" not in item


def test_mask_uses_the_image_size_and_resizes(kaggle_root: dict) -> None:
    root, ids = kaggle_root["root"], kaggle_root["ids"]
    data = make(root)
    data.list_cases()
    image, mask = data.load_case(ids[0])
    assert image.shape == mask.shape == (64, 64)
    small = make(root, image_size=32).arrays
    assert small.images.shape == (7, 32, 32, 1)
    np.testing.assert_array_equal(small.masks[small.ids.index(ids[3])][:, -2:], np.ones((32, 2), np.uint8))


def test_non_square_image_is_column_major(tmp_path: Path) -> None:
    sop = UID.format(5, 5)
    mask = np.zeros((48, 64), np.uint8)
    mask[40:48, 3] = 1  # bottom of column 3
    write_dicom(tmp_path, sop, np.full((48, 64), 7, np.uint8))
    (tmp_path / "train-rle.csv").write_text(f"ImageId,EncodedPixels\n{sop},{3 * 48 + 40} 8\n")
    data = make(tmp_path, layout="dicom")
    data.list_cases()
    image, decoded = data.load_case(sop)
    assert image.shape == (48, 64)
    np.testing.assert_array_equal(decoded, mask)


def test_monochrome1_and_16_bit_pixels(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    path = write_dicom(tmp_path, UID.format(1, 1), ramp, monochrome1=True)
    np.testing.assert_array_equal(read_dicom_gray(path), 255 - ramp)  # SimpleITK inverts MONOCHROME1
    wide = write_dicom(tmp_path, UID.format(2, 2), (np.tile(np.arange(64), (64, 1)) * 1000).astype(np.uint16))
    gray = read_dicom_gray(wide)
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    np.testing.assert_array_equal(gray[0], np.rint(np.arange(64) * 255 / 63).astype(np.uint8))
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom")
    with pytest.raises(DatasetError, match="broken.dcm"):
        read_dicom_gray(bad)


def test_positive_oversampling_repeats_train_positives(kaggle_root: dict) -> None:
    root = kaggle_root["root"]
    plain = make(root, split={"train": 1.0}, positive_oversample=1.0)
    assert len(plain.dataset("train")) == 7
    twice = make(root, split={"train": 1.0}, positive_oversample=2.0)
    train = twice.dataset("train")
    positives = {kaggle_root["ids"][i] for i in (0, 3, 5)}
    assert len(train) == 10
    assert all(train.ids.count(c) == (2 if c in positives else 1) for c in set(train.ids))
    half = make(root, split={"train": 1.0}, positive_oversample=1.5).dataset("train")
    assert len(half) == 7 + 2  # round(0.5 * 3) extra copies
    assert sorted(set(half.ids)) == sorted(set(train.ids))
    assert len(twice.dataset("val")) == 0 and twice.split_ids()["train"] == sorted(set(train.ids))
    with pytest.raises(ConfigError, match="positive_oversample"):
        make(root, positive_oversample=0.5)


def test_malformed_row_names_line_and_image(kaggle_root: dict) -> None:
    root, ids = kaggle_root["root"], kaggle_root["ids"]
    csv = root / "train-rle.csv"
    csv.write_text(csv.read_text().replace(f"{ids[1]}, -1", f"{ids[1]}, 10 5 7"))
    with pytest.raises(DatasetError, match=rf"line \d+ \(ImageId {ids[1]}\).*odd number"):
        make(root).arrays


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dicom-images-train.*PNG layout"):
        make(tmp_path).arrays
    with pytest.raises(DatasetError, match="not a folder"):
        make(tmp_path / "absent").arrays
    (tmp_path / "dicom-images-train").mkdir()
    with pytest.raises(DatasetError, match="train-rle.csv"):
        make(tmp_path).arrays
    with pytest.raises(DatasetError, match="images or <split>/inputs"):
        make(tmp_path, layout="png").arrays
    with pytest.raises(ConfigError, match="layout"):
        make(tmp_path, layout="nifti")
    with pytest.raises(ConfigError, match="in_channels"):
        make(tmp_path, in_channels=3)


def write_png_split(root: Path, split: str, names: list[str], image_dir: str, mask_dir: str) -> None:
    (root / split / image_dir).mkdir(parents=True)
    (root / split / mask_dir).mkdir(parents=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full((40, 40), 10 * k, np.uint8)).save(root / split / image_dir / f"{name}.png")
        Image.fromarray(box(0, 10 * k, 0, 40, size=40) * 255).save(root / split / mask_dir / f"{name}.png")


def test_png_layout_uses_split_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_png_split(tmp_path, "train", ["a", "b", "c"], "inputs", "labels")
    write_png_split(tmp_path, "val", ["d", "e"], "images", "masks")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "val" / "images" / "orphan.png")
    data = make(tmp_path, image_size=40)
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        split = data.split_ids()
    assert split == {"train": ["train/a", "train/b", "train/c"], "val": ["val/d", "val/e"], "test": []}
    assert "val/orphan" in caplog.text
    item = data.dataset("train")[2]
    assert item["image"].shape == (1, 40, 40) and int(item["image"][0, 0, 0]) == 20
    assert int(item["mask"].sum()) == 20 * 40 and set(item["mask"].unique().tolist()) == {0, 1}


def test_png_single_folder_is_cut_by_ratios(tmp_path: Path) -> None:
    write_png_split(tmp_path, "train", [f"x{i}" for i in range(8)], "images", "masks")
    split = make(tmp_path, layout="png", image_size=40).split_ids()
    assert {k: len(v) for k, v in split.items()} == {"train": 4, "val": 2, "test": 2}


def test_real_dicom_sample(shared_data: Path, tmp_path: Path) -> None:
    source = next((shared_data / "siim-sample" / "dicom-images-train").rglob("*.dcm"))
    target = tmp_path / source.relative_to(shared_data / "siim-sample")
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    (tmp_path / "train-rle.csv").write_text(f"ImageId, EncodedPixels\n{source.stem}, -1\n")
    data = make(tmp_path, split={"train": 1.0})
    assert data.list_cases() == [source.stem]
    image, mask = data.load_case(source.stem)
    assert image.shape == mask.shape == (1024, 1024)
    assert image.dtype == np.uint8 and image.std() > 20 and mask.sum() == 0
    assert data.arrays.images.shape == (1, 64, 64, 1)


def test_yaml_builds_the_reader(kaggle_root: dict) -> None:
    node = OmegaConf.load(CONFIGS / "dataset" / "siim.yaml")
    node.root = str(kaggle_root["root"])
    data = instantiate(node)
    assert isinstance(data, SIIMData)
    assert (data.layout, data.image_size, data.positive_oversample, data.rle) == ("auto", (128, 128), 1.0, "relative")
    assert sum(len(v) for v in data.split_ids().values()) == 7
