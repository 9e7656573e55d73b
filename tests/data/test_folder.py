"""FolderData on image/mask folders written here: both layouts, name pairing, value maps, grey input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.constants import IGNORE_INDEX
from seg.data.folder import FolderData
from seg.errors import ConfigError, DatasetError

H, W = 10, 14


def label(values: tuple[int, ...]) -> np.ndarray:
    """Vertical bands, one per value, so every value is present."""
    bands = np.array_split(np.arange(W), len(values))
    out = np.zeros((H, W), dtype=np.uint8)
    for value, cols in zip(values, bands):
        out[:, cols] = value
    return out


def write_pairs(folder: Path, names: list[str], values=(0, 255), suffix: str = "", image_ext: str = ".png") -> None:
    rng = np.random.default_rng(len(names))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / "images" / f"{name}{image_ext}")
        Image.fromarray(label(values), mode="L").save(folder / "masks" / f"{name}{suffix}.png")


def make(root: Path, **kwargs) -> FolderData:
    kwargs.setdefault("image_size", [H, W])
    return FolderData(root=str(root), cache_dir=str(root.parent / "cache"), **kwargs)


NAMES = [f"case_{i:02d}" for i in range(10)]


def test_flat_layout_seeded_split_and_default_binary_masks(tmp_path):
    write_pairs(tmp_path / "d", NAMES[:5], values=(0, 255), image_ext=".jpg")
    write_pairs(tmp_path / "d", NAMES[5:], values=(0, 1, 128))
    data = make(tmp_path / "d", split={"train": 0.6, "val": 0.2, "test": 0.2})
    split = data.split_ids()
    assert [len(split[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(split.values(), [])) == NAMES
    assert make(tmp_path / "d", split={"train": 0.6, "val": 0.2, "test": 0.2}).split_ids() == split
    masks = {}
    for s in ("train", "val", "test"):
        ds = data.dataset(s)
        for i, case in enumerate(ds.ids):
            item = ds[i]
            assert item["image"].shape == (3, H, W)
            masks[case] = item["mask"].numpy()
    np.testing.assert_array_equal(masks["case_00"], (label((0, 255)) > 0).astype(np.uint8))
    np.testing.assert_array_equal(masks["case_07"], (label((0, 1, 128)) > 0).astype(np.uint8))


def test_mask_suffix_and_value_map(tmp_path):
    write_pairs(tmp_path / "d", NAMES[:4], values=(0, 100, 200), suffix="_mask")
    data = make(tmp_path / "d", mask_suffix="_mask", value_map={0: 0, 100: 2, 200: 1},
                n_classes=3, class_names=["bg", "a", "b"])
    mask = data.dataset("train")[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, label((0, 2, 1)))


def test_multiclass_raw_values_and_unmapped_values(tmp_path):
    write_pairs(tmp_path / "d", NAMES[:4], values=(0, 1, 2, 255))
    raw = make(tmp_path / "d", n_classes=3, class_names=["bg", "a", "b"])
    np.testing.assert_array_equal(raw.dataset("train")[0]["mask"].numpy(), label((0, 1, 2, IGNORE_INDEX)))
    found = r"case_00.png holds values \[2, 255\] \(all values found: \[0, 1, 2, 255\]\)"
    with pytest.raises(DatasetError, match=found):
        make(tmp_path / "d", value_map={0: 0, 1: 1}).split_ids()
    with pytest.raises(DatasetError, match=r"holds values \[2\]"):
        make(tmp_path / "d", n_classes=2, class_names=["bg", "fg"]).split_ids()
    ignored = make(tmp_path / "d", value_map={"0": 0, "1": 1}, unmapped="ignore", image_size=20)
    mask = ignored.dataset("train")[0]["mask"].numpy()
    assert mask.shape == (20, 20) and set(np.unique(mask).tolist()) == {0, 1, IGNORE_INDEX}


def test_grayscale_images(tmp_path):
    write_pairs(tmp_path / "d", NAMES[:4])
    data = make(tmp_path / "d", grayscale=True, in_channels=1)
    item = data.dataset("train")[0]
    rgb = np.asarray(Image.open(tmp_path / "d" / "images" / f"{data.dataset('train').ids[0]}.png").convert("L"))
    assert item["image"].shape == (1, H, W)
    np.testing.assert_array_equal(item["image"][0].numpy(), rgb)
    with pytest.raises(ConfigError, match="set dataset.in_channels=1"):
        make(tmp_path / "d", grayscale=True, in_channels=3)
    with pytest.raises(ConfigError, match="set dataset.in_channels=3"):
        make(tmp_path / "d", in_channels=1)


def test_presplit_layout_keeps_folders_as_splits(tmp_path):
    root = tmp_path / "d"
    write_pairs(root / "train", NAMES[:6])
    write_pairs(root / "val", NAMES[:2])  # same names as in train: ids stay distinct
    write_pairs(root / "test", NAMES[8:])
    split = make(root).split_ids()
    assert split == {"train": [f"train/{n}" for n in NAMES[:6]], "val": ["val/case_00", "val/case_01"],
                     "test": ["test/case_08", "test/case_09"]}


def test_presplit_without_val_carves_it_from_train(tmp_path):
    root = tmp_path / "d"
    write_pairs(root / "train", NAMES)
    split = make(root, val_fraction=0.2).split_ids()
    assert len(split["train"]) == 8 and len(split["val"]) == 2 and split["test"] == []
    assert all(i.startswith("train/") for i in split["train"] + split["val"])
    assert make(root, val_fraction=0.2).split_ids() == split


def test_custom_folder_names_and_image_glob(tmp_path):
    root = tmp_path / "d"
    write_pairs(root, NAMES[:6])
    (root / "images").rename(root / "inputs")
    (root / "masks").rename(root / "labels")
    data = make(root, images_dir="inputs", masks_dir="labels", image_glob="case_0[0-3]*",
                split={"train": 0.5, "val": 0.5})
    assert sorted(sum(data.split_ids().values(), [])) == NAMES[:4]  # deselected images are not "unmatched"


def test_unmatched_files_are_listed_together_or_skipped(tmp_path, caplog):
    root = tmp_path / "d"
    write_pairs(root, NAMES[:5])
    (root / "masks" / "case_00.png").unlink()
    (root / "masks" / "case_01.png").rename(root / "masks" / "orphan.png")
    listed = r"(?s)images without mask \(2\): case_00.png, case_01.png.*masks without image \(1\): orphan.png"
    with pytest.raises(DatasetError, match=listed):
        make(root).split_ids()
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        split = make(root, skip_unmatched=True, split={"train": 2 / 3, "val": 1 / 3}).split_ids()
    assert sorted(split["train"] + split["val"]) == NAMES[2:5]
    records = [r for r in caplog.records if r.name == "seg.data"]
    assert len(records) == 1 and "orphan.png" in records[0].getMessage() and "case_00.png" in records[0].getMessage()


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="root not found"):
        make(tmp_path / "nowhere").split_ids()
    (tmp_path / "d" / "pictures").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"not laid out as root/images/ \+ root/masks/.*found \['pictures/'\]"):
        make(tmp_path / "d").split_ids()
    (tmp_path / "d" / "images").mkdir()
    with pytest.raises(DatasetError, match=r"missing folder .*masks"):
        make(tmp_path / "d").split_ids()
    write_pairs(tmp_path / "both", NAMES[:2])
    write_pairs(tmp_path / "both" / "train", NAMES[:2])
    with pytest.raises(DatasetError, match="keep one layout"):
        make(tmp_path / "both").split_ids()
    write_pairs(tmp_path / "dup", NAMES[:2])
    Image.new("RGB", (W, H)).save(tmp_path / "dup" / "images" / "case_00.bmp")
    with pytest.raises(DatasetError, match="ambiguous"):
        make(tmp_path / "dup").split_ids()
    write_pairs(tmp_path / "size", NAMES[:2])
    Image.new("L", (W + 1, H)).save(tmp_path / "size" / "masks" / "case_01.png")
    with pytest.raises(DatasetError, match=r"mask .*case_01.png is 15x10 but image .*case_01.png is 14x10"):
        make(tmp_path / "size").split_ids()


def test_config_errors(tmp_path):
    for bad in ({"unmapped": "drop"}, {"value_map": {0: 0, 255: 5}}, {"value_map": {"a": 1}}, {"val_fraction": -0.1}):
        with pytest.raises(ConfigError):
            make(tmp_path, **bad)


def test_recursive_glob_pairs_by_relative_path(tmp_path):
    root = tmp_path / "d"
    for site in ("site_a", "site_b"):
        for name in NAMES[:2]:
            for folder, array in (("images", np.zeros((H, W, 3), np.uint8)), ("masks", label((0, 255)))):
                (root / folder / site).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / site / f"{name}.png")
    data = make(root, image_glob="**/*.png", split={"train": 0.5, "val": 0.5})
    assert sorted(sum(data.split_ids().values(), [])) == [f"site_{s}/{n}" for s in "ab" for n in NAMES[:2]]
