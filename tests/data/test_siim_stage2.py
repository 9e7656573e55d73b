"""SIIM-ACR stage-2 release: stage_2_train.csv labels dicom-images-train and dicom-images-test.

Fixtures follow the stage-2 files as public pipelines read them: header `ImageId,EncodedPixels` with
no space and values without a leading space, SIIM's relative RLE (the same strings as train-rle.csv),
several rows for a multi-region image, plus the unlabelled `stage_2_images/ID_<hex>.dcm` (flat) and
`stage_2_sample_submission.csv`, which the reader must leave alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_siim import CONFIGS, UID, box, write_dicom

from seg.data.rle import ENCODERS, read_rle_csv, rle_decode
from seg.data.siim import SIIMData
from seg.errors import ConfigError, DatasetError

TRAIN, TEST = "dicom-images-train", "dicom-images-test"


def write_stage2(root: Path, form: str = "relative", stage1_csv: bool = False) -> dict:
    """4 stage-1 train and 3 stage-1 test DICOMs, labelled by stage_2_train.csv (RLE in `form`); with
    `stage1_csv`, also train-rle.csv (official stage-1 format) labelling the train images only."""
    rng = np.random.default_rng(1)
    train = [UID.format(3000 + i, 890000 + i) for i in range(4)]
    test = [UID.format(4000 + i, 891000 + i) for i in range(3)]
    pixels = {}
    for folder, ids in ((TRAIN, train), (TEST, test)):
        for case in ids:
            pixels[case] = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            write_dicom(root, case, pixels[case], folder=folder)
    regions = {
        train[1]: [box(5, 20, 10, 30)],
        test[0]: [box(2, 12, 3, 9), box(40, 60, 44, 50)],
        test[2]: [box(30, 34, 0, 64)],
    }
    encode = ENCODERS[form]

    def rows(case: str, sep: str) -> list[str]:  # one row per region, "-1" for none
        return [f"{case}{sep}{encode(m)}" for m in regions.get(case, [])] or [f"{case}{sep}-1"]

    lines = ["ImageId,EncodedPixels"] + [r for c in train + test for r in rows(c, ",")]
    (root / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    if stage1_csv:
        lines = ["ImageId, EncodedPixels"] + [r for c in train for r in rows(c, ", ")]
        (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    (root / "stage_2_images").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.uint8)), str(root / "stage_2_images/ID_0011fe81e.dcm"))
    (root / "stage_2_sample_submission.csv").write_text("ImageId,EncodedPixels\nID_0011fe81e,-1\n")
    masks = {c: np.maximum.reduce(regions.get(c, [np.zeros((64, 64), np.uint8)])) for c in train + test}
    return {"root": root, "train": train, "test": test, "pixels": pixels, "masks": masks}


def make(root: Path, **kwargs) -> SIIMData:
    return SIIMData(root=str(root), **({"image_size": 64, "split": {"train": 1.0}} | kwargs))


def check_arrays(data: SIIMData, tree: dict) -> None:
    arrays = data.arrays
    assert arrays.ids == sorted(tree["train"] + tree["test"])
    for case in tree["train"] + tree["test"]:
        i = arrays.ids.index(case)
        np.testing.assert_array_equal(arrays.images[i, ..., 0], tree["pixels"][case])
        np.testing.assert_array_equal(arrays.masks[i], tree["masks"][case])


def test_stage2_layout_reads_both_image_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = write_stage2(tmp_path)
    data = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="seg.data"):
        check_arrays(data, tree)  # includes the two-row (union) mask of a stage-1 test image
    messages = [r.getMessage() for r in caplog.records if r.name == "seg.data"]
    assert f"siim: labels from stage_2_train.csv, images from {TRAIN}/ and {TEST}/" in messages
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)  # stage_2_images/ is not read
    assert data.cache_fields()["csv"][0] == "stage_2_train.csv" and data.cache_fields()["rle"] == "relative"


def test_stage2_csv_is_preferred_and_train_rle_is_the_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = write_stage2(tmp_path, stage1_csv=True)
    with caplog.at_level(logging.INFO, logger="seg.data"):
        check_arrays(make(tmp_path), tree)
    assert "labels from stage_2_train.csv" in caplog.text and "not used: train-rle.csv" in caplog.text
    (tmp_path / "stage_2_train.csv").unlink()
    caplog.clear()
    stage1 = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="seg.data"):
        ids = stage1.list_cases()
    assert ids == sorted(tree["train"])  # train-rle.csv does not label the stage-1 test images
    assert f"not used: {TEST}/ (train-rle.csv has no labels for it" in caplog.text
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    assert stage1.cache_fields()["csv"][0] == "train-rle.csv"  # a new label file means a new cache


def test_absolute_rle_option(tmp_path: Path) -> None:
    tree = write_stage2(tmp_path, form="absolute")
    check_arrays(make(tmp_path, rle="absolute"), tree)
    assert make(tmp_path, rle="absolute").cache_fields()["rle"] == "absolute"
    with pytest.raises(DatasetError, match=r"stage_2_train.csv line \d+ .*past the end.*set dataset.rle=absolute"):
        _ = make(tmp_path).arrays  # absolute starts read as relative offsets overflow the image


def test_relative_file_read_as_absolute_names_the_fix(tmp_path: Path) -> None:
    write_stage2(tmp_path)
    with pytest.raises(DatasetError, match=r"probably SIIM's relative form.*set dataset.rle=relative"):
        _ = make(tmp_path, rle="absolute").arrays


def test_rle_option_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.rle='standard'.*\['relative', 'absolute'\]"):
        make(tmp_path, rle="standard")


def test_yaml_rle_key_reaches_the_reader(tmp_path: Path) -> None:
    tree = write_stage2(tmp_path, form="absolute")
    node = OmegaConf.load(CONFIGS / "dataset" / "siim.yaml")
    node.root, node.image_size, node.split, node.rle = str(tmp_path), 64, {"train": 1.0}, "absolute"
    data = instantiate(node)
    assert data.rle == "absolute"
    check_arrays(data, tree)


def test_competition_download_without_stage1_images(tmp_path: Path) -> None:
    """The Kaggle stage-2 download has stage_2_train.csv and stage_2_images/ but not the stage-1 DICOMs."""
    tree = write_stage2(tmp_path)
    for folder in (TRAIN, TEST):
        shutil.rmtree(tree["root"] / folder)
    with pytest.raises(DatasetError, match=r"lacks an image folder .*stage_2_images/ is the unlabelled.*expected"):
        _ = make(tmp_path).arrays


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_csv", r"lacks a label CSV \(stage_2_train.csv or train-rle.csv\); expected either the Kaggle DICOM"),
        ("no_dcm", rf"no .dcm file under {TRAIN}/ or {TEST}/ in .*; expected either the Kaggle DICOM"),
        ("columns", r"siim: .*stage_2_train.csv: header \['ID', 'Label'\].*; expected either the Kaggle DICOM"),
    ],
)
def test_user_errors_name_the_layout(tmp_path: Path, change: str, message: str) -> None:
    write_stage2(tmp_path)
    csv = tmp_path / "stage_2_train.csv"
    if change == "no_csv":
        csv.unlink()
    elif change == "no_dcm":
        for dcm in [*tmp_path.glob(f"{TRAIN}/**/*.dcm"), *tmp_path.glob(f"{TEST}/**/*.dcm")]:
            dcm.unlink()
    else:
        csv.write_text(csv.read_text().replace("ImageId,EncodedPixels", "ID,Label", 1))  # e.g. RSNA's stage_2_train.csv
    with pytest.raises(DatasetError, match=message):
        _ = make(tmp_path).arrays


def official_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The organisers' mask_functions.rle2mask (relative starts), used here as an independent oracle."""
    mask = np.zeros(width * height, np.uint8)
    if rle.strip() == "-1":
        return mask.reshape(width, height).T
    values = [int(v) for v in rle.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2]):
        position += start
        mask[position : position + length] = 1
        position += length
    return mask.reshape(width, height).T


def test_real_dicom_with_real_rows_in_the_stage2_layout(shared_data: Path, tmp_path: Path) -> None:
    """The real DICOM placed under dicom-images-test/ and labelled by real rows (three regions, union)."""
    source = next((shared_data / "siim-sample" / TRAIN).rglob("*.dcm"))
    target = tmp_path / TEST / source.relative_to(shared_data / "siim-sample" / TRAIN)
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    real = read_rle_csv(shared_data / "siim-sample" / "train-rle-subset1500.csv")
    rows = [rle for group in real.values() for _, rle in group if rle.strip() != "-1"][:3]
    lines = ["ImageId,EncodedPixels"] + [f"{source.stem},{rle.strip()}" for rle in rows]
    (tmp_path / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    data = make(tmp_path)
    assert data.list_cases() == [source.stem]
    image, mask = data.load_case(source.stem)
    expected = np.maximum.reduce([official_rle2mask(rle, 1024, 1024) for rle in rows])
    assert image.shape == (1024, 1024) and image.std() > 20 and expected.any()
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(rle_decode(rows[0]), official_rle2mask(rows[0], 1024, 1024))
