"""PetsData on a tiny tree in the release's exact layout, with the release's real quirks, and on the
real sample files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg.constants import IGNORE_INDEX
from seg.data.pets import PetsData
from seg.errors import ConfigError, DatasetError

H, W = 12, 16
LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)
# name -> (class id, species, breed id)
TRAINVAL = {f"Abyssinian_{i}": (1, 1, 1) for i in range(1, 9)} | {"Bengal_1": (6, 1, 2), "Bengal_2": (6, 1, 2)}
TEST = {"american_bulldog_1": (2, 2, 1), "american_bulldog_2": (2, 2, 1), "american_bulldog_3": (2, 2, 1),
        "beagle_1": (13, 2, 2), "beagle_2": (13, 2, 2)}
PALETTE_COLOUR = (200, 40, 10)


def trimap() -> np.ndarray:
    """Background 2 around a pet block 1 whose outline is border 3."""
    t = np.full((H, W), 2, dtype=np.uint8)
    t[2:10, 3:13] = 3
    t[3:9, 4:12] = 1
    return t


def write_pets(root: Path) -> Path:
    """Release layout with every quirk: grey and CMYK JPEGs, a GIF and an RGBA PNG named .jpg, a
    corrupt .jpg, an image without trimap, a trimap without image, an image in no split file, and the
    .mat files the real images/ folder holds."""
    images, trimaps = root / "images", root / "annotations" / "trimaps"
    images.mkdir(parents=True)
    trimaps.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = lambda: Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))  # noqa: E731
    for name in [*TRAINVAL, *TEST, "Bengal_9"]:
        Image.fromarray(trimap(), mode="L").save(trimaps / f"{name}.png")
        rgb().save(images / f"{name}.jpg", format="JPEG")
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8), mode="L").save(images / "Bengal_1.jpg", format="JPEG")
    rgb().convert("CMYK").save(images / "Bengal_2.jpg", format="JPEG")
    gif = Image.new("P", (W, H), 0)
    gif.putpalette([*PALETTE_COLOUR, 0, 0, 255] + [0] * 762)
    gif.save(images / "Abyssinian_3.jpg", format="GIF")
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 120, 250), 255
    Image.fromarray(rgba, mode="RGBA").save(images / "Abyssinian_4.jpg", format="PNG")
    (images / "american_bulldog_2.jpg").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (trimaps / "american_bulldog_3.png").unlink()  # image without trimap
    Image.fromarray(trimap(), mode="L").save(trimaps / "pug_1.png")  # trimap without image
    (images / "Abyssinian_1.mat").write_bytes(b"MATLAB 5.0")
    ann = root / "annotations"
    line = lambda n, c: f"{n} {c[0]} {c[1]} {c[2]}\n"  # noqa: E731
    (ann / "trainval.txt").write_text("".join(line(n, c) for n, c in TRAINVAL.items()))
    (ann / "test.txt").write_text("".join(line(n, c) for n, c in TEST.items()))
    (ann / "list.txt").write_text(LIST_HEADER + "".join(line(n, c) for n, c in (TRAINVAL | TEST).items()))
    return root


@pytest.fixture
def pets_root(tmp_path: Path) -> Path:
    return write_pets(tmp_path / "oxford-iiit-pet")


def make(root: Path, **kwargs) -> PetsData:
    kwargs.setdefault("image_size", [H, W])
    return PetsData(root=str(root), cache_dir=str(root.parent / "cache"), **kwargs)


def test_splits_follow_official_files_and_skip_bad_files_in_one_warning(pets_root, caplog):
    data = make(pets_root)
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        split = data.split_ids()
    assert split["test"] == ["american_bulldog_1", "beagle_1", "beagle_2"]
    assert len(split["train"]) == 9 and len(split["val"]) == 1
    assert sorted(split["train"] + split["val"]) == sorted(TRAINVAL)
    records = [r for r in caplog.records if r.name == "seg.data"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    expected = [
        ("unreadable image", "american_bulldog_2.jpg"),
        ("image without trimap", "american_bulldog_3.jpg"),
        ("trimap without image", "pug_1.png"),
        ("neither trainval.txt nor test.txt", "Bengal_9.jpg"),
    ]
    for reason, name in expected:
        assert reason in message and name in message
    assert "Abyssinian_1.mat" not in message
    for name in ("Bengal_9", "american_bulldog_2", "american_bulldog_3", "pug_1"):
        assert all(name not in ids for ids in split.values())


def test_val_is_carved_deterministically_by_seed(pets_root):
    a = make(pets_root, val_fraction=0.3).split_ids()
    b = make(pets_root, val_fraction=0.3).split_ids()
    c = make(pets_root, val_fraction=0.3, split_seed=7).split_ids()
    assert a == b and len(a["val"]) == 3 and len(a["train"]) == 7
    assert a["test"] == c["test"] and sorted(a["train"] + a["val"]) == sorted(c["train"] + c["val"])
    assert a["val"] != c["val"]
    assert make(pets_root, val_fraction=0.0).split_ids()["val"] == []


def test_trimap_mode_maps_values_to_class_ids_and_decodes_by_content(pets_root):
    data = make(pets_root)
    expected = trimap() - 1
    images = {}
    for split in ("train", "val", "test"):
        ds = data.dataset(split)
        for i, case in enumerate(ds.ids):
            item = ds[i]
            assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.uint8
            np.testing.assert_array_equal(item["mask"].numpy(), expected)
            images[case] = item["image"].numpy()
    assert len(images) == 13
    assert (images["Abyssinian_3"][:, 0, 0] == PALETTE_COLOUR).all()  # GIF named .jpg
    assert (images["Abyssinian_4"] == np.array([10, 120, 250])[:, None, None]).all()  # RGBA PNG named .jpg
    grey = images["Bengal_1"]
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    assert data.class_names == ["pet", "background", "border"] and data.n_classes == 3


@pytest.mark.parametrize("border, border_id", [("pet", 1), ("background", 0), ("ignore", IGNORE_INDEX)])
def test_binary_mode_border_option(pets_root, border, border_id):
    data = make(pets_root, mode="binary", border=border, n_classes=1, class_names=["pet"])
    mask = data.dataset("test")[0]["mask"].numpy()
    t = trimap()
    assert (mask[t == 1] == 1).all() and (mask[t == 2] == 0).all() and (mask[t == 3] == border_id).all()


def test_binary_ignore_survives_resizing(pets_root):
    data = make(pets_root, mode="binary", border="ignore", n_classes=1, class_names=["pet"], image_size=24)
    mask = data.dataset("train")[0]["mask"].numpy()
    assert mask.shape == (24, 24)
    assert set(np.unique(mask).tolist()) == {0, 1, IGNORE_INDEX}
    smooth = make(pets_root, mode="binary", border="background", n_classes=1, class_names=["pet"], image_size=24)
    assert set(np.unique(smooth.dataset("train")[0]["mask"].numpy()).tolist()) == {0, 1}


def test_mode_and_class_count_must_agree(pets_root):
    with pytest.raises(ConfigError, match=r"dataset.n_classes=1 dataset.class_names=\[pet\]"):
        make(pets_root, mode="binary", n_classes=3, class_names=["pet", "background", "border"])
    with pytest.raises(ConfigError, match=r"dataset.n_classes=3 dataset.class_names=\[pet,background,border\]"):
        make(pets_root, mode="trimap", n_classes=1, class_names=["pet"])
    assert make(pets_root, mode="binary").class_names == ["pet"]  # omitted -> taken from the mode
    for bad in ({"mode": "instance"}, {"border": "edge"}, {"val_fraction": 1.0}, {"in_channels": 1}):
        with pytest.raises(ConfigError):
            make(pets_root, **bad)


def test_layout_errors(tmp_path, pets_root):
    with pytest.raises(DatasetError, match="root not found"):
        make(tmp_path / "nowhere").split_ids()
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"missing folder .*annotations.*found \['images'\]"):
        make(tmp_path / "only_images").split_ids()
    (pets_root / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1\n")
    with pytest.raises(DatasetError, match=r"trainval.txt, line 1: expected 4 columns <image name> <class id"):
        make(pets_root).split_ids()
    (pets_root / "annotations" / "trainval.txt").unlink()
    with pytest.raises(DatasetError, match="trainval.txt not found"):
        make(pets_root).split_ids()


def test_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "pets"
    (root / "annotations" / "trimaps").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "Abyssinian_1.jpg").write_bytes(b"not an image")
    Image.fromarray(trimap(), mode="L").save(root / "annotations" / "trimaps" / "Abyssinian_1.png")
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\n")
    (root / "annotations" / "test.txt").write_text("")
    with pytest.raises(DatasetError, match=r"(?s)no usable image.*unreadable image \(1\): Abyssinian_1.jpg"):
        make(root).split_ids()


def test_bad_trimap_values_name_the_file(pets_root):
    bad = Image.fromarray(np.full((H, W), 7, dtype=np.uint8), mode="L")
    bad.save(pets_root / "annotations" / "trimaps" / "beagle_1.png")
    with pytest.raises(DatasetError, match=r"beagle_1.png: trimap values \[7\]"):
        make(pets_root).split_ids()


def test_real_sample_release(shared_data, tmp_path, caplog):
    root = shared_data / "oxford-pets-sample"
    data = PetsData(root=str(root), image_size=64, cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        split = data.split_ids()
    message = " ".join(r.getMessage() for r in caplog.records if r.name == "seg.data")
    assert "Abyssinian_34.jpg" in message and "Abyssinian_82.jpg" in message
    assert len(split["train"]) == 8 and len(split["val"]) == 1 and len(split["test"]) == 5
    assert "Abyssinian_5" in split["test"]  # the RGBA PNG named .jpg
    test = data.dataset("test")
    item = test[test.ids.index("Abyssinian_5")]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
    masks = np.stack([test[i]["mask"].numpy() for i in range(len(test))])
    assert set(np.unique(masks).tolist()) == {0, 1, 2}
    assert (masks == 0).mean() > 0.1  # the pet is a sizeable part of each photo


def truncate_jpeg(path: Path) -> None:
    """Cut a JPEG inside its scan data: the header (and so the size check at listing) still reads,
    only decoding fails, as with an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 40])


def test_truncated_jpeg_is_skipped_and_named_in_the_one_warning(pets_root, caplog):
    truncate_jpeg(pets_root / "images" / "beagle_2.jpg")
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        split = make(pets_root).split_ids()
    records = [r for r in caplog.records if r.name == "seg.data"]
    assert len(records) == 1  # together with the files skipped while listing
    message = records[0].getMessage()
    assert "unreadable image (2): american_bulldog_2.jpg (" in message  # header unreadable: at listing
    assert "beagle_2.jpg (OSError: image file is truncated" in message  # data unreadable: at decoding
    assert "image without trimap" in message and "skipped 5 file(s)/entries" in message
    assert split["test"] == ["american_bulldog_1", "beagle_1"]
    assert all("beagle_2" not in ids for ids in split.values())

    caplog.clear()  # a later run reads the cache, and still names the file
    with caplog.at_level(logging.WARNING, logger="seg.data"):
        again = make(pets_root)
        assert again.split_ids() == split
    assert "beagle_2.jpg (OSError: image file is truncated" in caplog.text
    assert len(again.dataset("test")) == 2
