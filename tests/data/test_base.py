"""The shared data machinery: seeded splits, the decoded-array cache, resize helpers, the cached-array
base class and the content-sniffing image readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg.constants import IGNORE_INDEX
from seg.data.base import CachedArrayData, as_size, resize_image, resize_mask
from seg.data.cache import build_or_load, iter_entries
from seg.data.io import read_gray, read_label, read_rgb
from seg.data.split import seeded_split, split_counts, write_split
from seg.errors import ConfigError, DatasetError

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}

# --- split ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, expected", [(100, (70, 10, 20)), (240, (168, 24, 48)), (5, (3, 1, 1)), (3, (1, 1, 1))])
def test_split_counts(n: int, expected: tuple[int, int, int]) -> None:
    counts = split_counts(n, RATIOS)
    assert (counts["train"], counts["val"], counts["test"]) == expected


def test_split_counts_allow_missing_splits() -> None:
    assert split_counts(10, {"train": 0.7, "test": 0.3}) == {"train": 7, "val": 0, "test": 3}
    assert split_counts(10, {"train": 1.0}) == {"train": 10, "val": 0, "test": 0}
    assert split_counts(3, {"train": 2 / 3, "val": 1 / 3}) == {"train": 2, "val": 1, "test": 0}  # float sums


@pytest.mark.parametrize(
    "ratios, shown, total",
    [
        ({"train": 0.9, "val": 0.1, "test": 0.2}, "{train: 0.9, val: 0.1, test: 0.2}", "1.2"),
        ({"train": 7, "test": 3}, "{train: 7, test: 3}", "10"),  # counts are not ratios
        ({"train": 0.5, "val": 0.1}, "{train: 0.5, val: 0.1}", "0.6"),
    ],
)
def test_split_ratios_must_sum_to_one(ratios: dict, shown: str, total: str) -> None:
    expected = f"dataset.split ratios {shown} sum to {total}; they must sum to 1"
    with pytest.raises(ConfigError) as err:
        split_counts(10, ratios)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="must sum to 1"):
        seeded_split([f"c{i}" for i in range(10)], ratios, seed=0)


@pytest.mark.parametrize(
    "n, ratios, message",
    [
        (10, {"train": 0.8, "valid": 0.2}, "unknown split name"),
        (10, {"train": 1.0, "val": -0.1}, ">= 0"),
        (10, {"train": 0.0, "val": 0.0}, "not all zero"),
        (2, {"train": 0.1, "val": 0.9}, "too few"),
    ],
)
def test_split_counts_reject_bad_ratios(n: int, ratios: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_counts(n, ratios)


def test_seeded_split_is_deterministic_and_complete(tmp_path: Path) -> None:
    ids = [f"case{i:03d}" for i in range(50)]
    split = seeded_split(ids, RATIOS, seed=42)
    assert [len(split[s]) for s in ("train", "val", "test")] == [35, 5, 10]
    assert sorted(sum(split.values(), [])) == ids  # disjoint and complete
    assert seeded_split(list(reversed(ids)), RATIOS, seed=42) == split  # listing order is irrelevant
    assert seeded_split(ids, RATIOS, seed=7) != split
    assert all(v == sorted(v) for v in split.values())
    write_split(tmp_path / "split.json", split)
    assert json.loads((tmp_path / "split.json").read_text()) == split


# --- cache ------------------------------------------------------------------------------------------


class CountingLoader:
    """A fake decoder that records which ids it was asked for."""

    def __init__(self, fail_at: str | None = None, error: type[BaseException] = KeyboardInterrupt) -> None:
        self.calls: list[str] = []
        self.fail_at, self.error = fail_at, error

    def __call__(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(case)
        if case == self.fail_at:
            raise self.error(f"stopped at {case}")
        k = int(case[-1])
        image = np.full((4, 5, 3), k * 10, dtype=np.uint8)
        mask = np.zeros((4, 5), dtype=np.uint8)
        mask[:k] = 1
        return image, mask


IDS = ["c0", "c1", "c2", "c3"]


def test_cache_builds_once_then_reuses(tmp_path: Path) -> None:
    load = CountingLoader()
    first = build_or_load(tmp_path, "toy", {"size": 4}, IDS, load)
    assert load.calls == IDS
    assert first.images.shape == (4, 4, 5, 3) and first.masks.shape == (4, 4, 5) and first.weights is None
    assert first.ids == IDS and isinstance(first.images, np.memmap)
    np.testing.assert_array_equal(first.masks.sum(axis=(1, 2)), [0, 5, 10, 15])
    assert json.loads((first.path / "meta.json").read_text()) == {"size": 4}

    again = CountingLoader(fail_at="c0", error=AssertionError)
    second = build_or_load(tmp_path, "toy", {"size": 4}, IDS, again)
    assert again.calls == [] and second.path == first.path
    np.testing.assert_array_equal(second.images, first.images)
    assert list(iter_entries(tmp_path)) == [first.path]


def test_cache_key_follows_fields_and_ids(tmp_path: Path) -> None:
    base = build_or_load(tmp_path, "toy", {"size": 4}, IDS, CountingLoader()).path
    assert build_or_load(tmp_path, "toy", {"size": 5}, IDS, CountingLoader()).path != base
    fewer = CountingLoader()
    assert build_or_load(tmp_path, "toy", {"size": 4}, IDS[:3], fewer).path != base
    assert fewer.calls == IDS[:3]
    assert build_or_load(tmp_path, "other", {"size": 4}, IDS, CountingLoader()).path != base


def test_interrupted_build_leaves_no_entry(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        build_or_load(tmp_path, "toy", {"size": 4}, IDS, CountingLoader(fail_at="c2"))
    assert list(tmp_path.iterdir()) == []  # neither an entry nor a half-written temporary folder
    with pytest.raises(DatasetError):
        build_or_load(tmp_path, "toy", {"size": 4}, IDS, CountingLoader(fail_at="c3", error=DatasetError))
    assert list(tmp_path.iterdir()) == []
    load = CountingLoader()
    arrays = build_or_load(tmp_path, "toy", {"size": 4}, IDS, load)
    assert load.calls == IDS and arrays.ids == IDS


def test_cache_weight_maps(tmp_path: Path) -> None:
    arrays = build_or_load(tmp_path, "toy", {"w": 1}, IDS, CountingLoader(), weight_fn=lambda m: 1.0 + m * 2.0)
    assert arrays.weights is not None and arrays.weights.dtype == np.float32
    np.testing.assert_array_equal(arrays.weights, 1.0 + arrays.masks * 2.0)


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "env-cache"))
    arrays = build_or_load(None, "toy", {"size": 4}, IDS, CountingLoader())
    assert arrays.path is not None and arrays.path.parent == tmp_path / "env-cache"


# --- resize helpers ---------------------------------------------------------------------------------


def blob_mask(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1).astype(np.uint8)


def test_as_size() -> None:
    assert as_size(64) == (64, 64) and as_size([32, 48]) == (32, 48)
    with pytest.raises(ConfigError, match="image_size"):
        as_size([1, 2, 3])


def test_resize_image_keeps_uint8() -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    out = resize_image(image, (16, 20))
    assert out.shape == (16, 20, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(image.mean())) < 3
    np.testing.assert_array_equal(resize_image(image, (30, 41)), image)  # already that size: untouched


@pytest.mark.parametrize("size", [(16, 16), (80, 100), (13, 7)])
def test_resize_mask_binary_stays_binary(size: tuple[int, int]) -> None:
    mask = blob_mask()
    out = resize_mask(mask, size, binary=True)
    assert out.shape == size and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) <= {0, 1}
    assert abs(out.mean() - mask.mean()) < 0.08


def test_resize_mask_binary_keeps_ignore_out_of_foreground() -> None:
    mask = blob_mask()
    mask[:, :5] = IGNORE_INDEX
    out = resize_mask(mask, (20, 25), binary=True)
    assert set(np.unique(out).tolist()) == {0, 1, IGNORE_INDEX}
    assert (out[:, :2] == IGNORE_INDEX).all() and not (out[:, 4:] == IGNORE_INDEX).any()


def test_resize_mask_class_map_invents_no_class() -> None:
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[:, 10:20] = 2
    mask[:, 20:] = 5
    out = resize_mask(mask, (17, 13), binary=False)
    assert out.dtype == np.uint8 and set(np.unique(out).tolist()) == {0, 2, 5}  # no 1, 3 or 4 in between


# --- CachedArrayData --------------------------------------------------------------------------------


class ToyData(CachedArrayData):
    name = "toy"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.loads = 0

    def list_cases(self) -> list[str]:
        return [f"t{i:02d}" for i in range(10)]

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        self.loads += 1
        k = int(case_id[1:])
        return np.full((12, 18), k, dtype=np.uint8), (blob_mask(12, 18) * (k % 2)).astype(np.uint8)


def test_cached_array_data_views(tmp_path: Path) -> None:
    data = ToyData(image_size=[6, 9], cache_dir=str(tmp_path), class_names=["thing"])
    split = data.split_ids()
    assert [len(split[s]) for s in ("train", "val", "test")] == [7, 1, 2]
    train = data.dataset("train")
    assert len(train) == 7 and train.ids == split["train"]
    item = train[3]
    k = int(train.ids[3][1:])
    assert item["image"].shape == (1, 6, 9) and item["image"].dtype == torch.uint8
    assert (item["image"] == k).all() and item["index"] == 3
    assert item["mask"].shape == (6, 9) and set(item["mask"].unique().tolist()) <= {0, 1}
    item["mask"][0, 0] = 7  # items are private copies: the cache is never written through them
    assert train[3]["mask"][0, 0] != 7
    assert data.preview_indices("train", 3) == [0, 3, 6] and data.preview_indices("val", 5) == [0]
    assert ToyData(image_size=[6, 9], cache_dir=str(tmp_path)).arrays.path == data.arrays.path
    with pytest.raises(ConfigError, match="unknown split"):
        data.dataset("validation")


def test_bad_split_ratios_fail_at_construction_before_any_case_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sum to 1\.2; they must sum to 1"):
        ToyData(split={"train": 0.9, "val": 0.1, "test": 0.2}, cache_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # no cache was built


def test_meta_is_checked() -> None:
    with pytest.raises(ConfigError, match="class_names"):
        ToyData(n_classes=3, class_names=["a", "b"])
    data = ToyData(n_classes=3, class_names=["a", "b", "c"])
    assert (data.n_classes, data.class_names) == (3, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="in_channels=4"):
        data.require("in_channels", 4, 3)


# --- io ---------------------------------------------------------------------------------------------


def test_readers_decode_by_content(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "really_png.jpg", format="PNG")
    np.testing.assert_array_equal(read_rgb(tmp_path / "really_png.jpg"), rgb)

    grey = np.arange(42, dtype=np.uint8).reshape(6, 7)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.bmp")
    assert read_rgb(tmp_path / "grey.bmp").shape == (6, 7, 3)
    np.testing.assert_array_equal(read_gray(tmp_path / "grey.bmp"), grey)

    rgba = np.zeros((6, 7, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:3, :, 3] = 200, 255  # bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    out = read_rgb(tmp_path / "alpha.png")
    assert (out[:3, :, 0] == 200).all() and (out[3:] == 0).all()

    deep = (np.arange(42, dtype=np.uint16).reshape(6, 7) * 1000)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_rgb(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_read_label_keeps_stored_values(tmp_path: Path) -> None:
    bits = blob_mask(9, 11).astype(bool)
    Image.fromarray(bits).convert("1").save(tmp_path / "mask.bmp")
    assert set(np.unique(read_label(tmp_path / "mask.bmp")).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_label(tmp_path / "mask.bmp") > 0, bits)

    classes = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)
    palette = Image.fromarray(classes, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tmp_path / "classes.png")
    np.testing.assert_array_equal(read_label(tmp_path / "classes.png"), classes)  # indices, not colours


def test_readers_name_a_bad_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.bmp"
    corrupt.write_bytes(b"BM" + b"\x00" * 20)
    for reader in (read_rgb, read_gray, read_label):
        with pytest.raises(DatasetError, match="cannot read image") as err:
            reader(corrupt)
        assert str(corrupt) in str(err.value)
    missing = tmp_path / "gone.png"
    with pytest.raises(DatasetError, match="file not found") as err:
        read_rgb(missing)
    assert str(missing) in str(err.value)
