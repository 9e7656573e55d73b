"""Luna16Data: config checks, split by series, context channels, training crops, validation slices,
preview choice and the lazily built, memory-mapped cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hydra.utils import instantiate
from luna_fixtures import sphere, uid
from numpy.lib.stride_tricks import sliding_window_view
from omegaconf import OmegaConf

from seg.data.luna import Luna16Data
from seg.data.luna.dataset import SeriesStore
from seg.engine.builders import build_loader
from seg.errors import ConfigError, DatasetError

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "dataset" / "luna16.yaml"
CROP, WINDOW = 32, 40


def make(root: Path, cache: Path, **overrides) -> Luna16Data:
    kwargs = dict(root=str(root), cache_dir=str(cache), val_stride=2, crop_size=CROP, window=WINDOW, epoch_samples=10)
    return Luna16Data(**{**kwargs, **overrides})


def volume(series) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(series.path)))


def _fail_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cache should have been used instead of reading a .mhd")


def test_yaml_instantiates_with_context_channels(shared_luna, tmp_path: Path) -> None:
    root, _ = shared_luna
    cfg = OmegaConf.load(CONFIG)
    cfg.root, cfg.cache_dir = str(root), str(tmp_path)
    data = instantiate(cfg)
    assert isinstance(data, Luna16Data)
    assert (data.in_channels, data.n_classes, data.class_names) == (7, 1, ["nodule"])
    assert (data.crop_size, data.window, data.val_stride, data.full_ct) == (64, 96, 10, False)
    assert data.split_ids()["val"] == [uid(101)]  # stride 10 over 6 series
    cfg.context_slices = 1
    assert instantiate(cfg).in_channels == 3
    with pytest.raises(DatasetError, match=r"\(48, 48\) voxels, smaller than dataset.crop_size=64"):
        instantiate(cfg).dataset("train")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"in_channels": 3}, r"in_channels=3 but context_slices=3 gives 7"),
        ({"image_size": 256}, "native size"),
        ({"n_classes": 2, "class_names": ["a", "b"]}, "n_classes"),
        ({"window": 16}, "window=16 must be >= dataset.crop_size=32"),
        ({"val_stride": 1}, "val_stride must be an integer >= 2"),
        ({"epoch_samples": 0}, "epoch_samples"),
        ({"context_slices": -1}, "context_slices"),
        ({"max_series": 0}, "max_series"),
        ({"prepare_workers": 0}, "prepare_workers"),
        ({"hu_clip": [0, 100]}, "mask_threshold_hu"),
    ],
)
def test_config_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(tmp_path, tmp_path, **overrides)


def test_split_by_series_stride_and_no_test(shared_luna, tmp_path: Path) -> None:
    root, _ = shared_luna
    data = make(root, tmp_path)
    split = data.split_ids()
    assert split == {"train": [uid(102), uid(104), uid(106)], "val": [uid(101), uid(103), uid(105)], "test": []}
    assert make(root, tmp_path, val_stride=3).split_ids()["val"] == [uid(101), uid(104)]
    with pytest.raises(ConfigError, match="LUNA16 has no test split; use split=val"):
        data.dataset("test")
    with pytest.raises(ConfigError, match="unknown split"):
        data.dataset("holdout")
    quick = make(root, tmp_path, max_series=3)  # first 3 annotated series
    assert quick.split_ids() == {"train": [uid(102)], "val": [uid(101), uid(103)], "test": []}


def test_missing_root_is_reported_lazily(tmp_path: Path) -> None:
    data = make(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        data.split_ids()


def test_validation_positive_slices_and_full_ct(shared_luna, tmp_path: Path) -> None:
    root, series = shared_luna
    val = make(root, tmp_path).dataset("val")
    assert val.ids == [f"{uid(101)}:{s}" for s in (9, 10, 11, 13, 14, 15)] + [f"{uid(103)}:{s}" for s in (11, 12, 13)]
    item = val[4]
    assert item["image"].shape == (7, 48, 48) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.uint8 and item["index"] == 4
    expected = sphere(series[0].shape, (14, 30, 28))[14]
    np.testing.assert_array_equal(item["mask"].numpy(), expected.astype(np.uint8))

    full = make(root, tmp_path, full_ct=True).dataset("val")
    assert len(full) == 3 * 24 and full.ids[24] == f"{uid(103)}:0"
    assert sum(int(full[i]["mask"].any()) for i in range(len(full))) == 9
    assert not full[2 * 24 + 5]["mask"].any()  # uid(105) has no nodule but is in full CT validation


def test_context_channels_clamped_at_the_ends(shared_luna, tmp_path: Path) -> None:
    root, series = shared_luna
    full = make(root, tmp_path, full_ct=True).dataset("val")
    hu = volume(series[0]).astype(np.float32)
    first, middle, last = full[0]["image"].numpy(), full[10]["image"].numpy(), full[23]["image"].numpy()
    for c in range(4):
        np.testing.assert_array_equal(first[c], hu[0])
        np.testing.assert_array_equal(last[6 - c], hu[23])
    np.testing.assert_array_equal(first[4:], hu[1:4])
    np.testing.assert_array_equal(last[:3], hu[20:23])
    np.testing.assert_array_equal(middle, hu[7:14])
    narrow = make(root, tmp_path, full_ct=True, context_slices=1).dataset("val")
    np.testing.assert_array_equal(narrow[0]["image"].numpy(), hu[[0, 0, 1]])


def test_training_crops_around_nodules(shared_luna, tmp_path: Path) -> None:
    root, series = shared_luna
    data = make(root, tmp_path, epoch_samples=13)
    train = data.dataset("train")
    nodules = [(uid(102), 6, 24, 24), (uid(104), 2, 26, 20), (uid(106), 20, 22, 26), (uid(106), 11, 27, 18)]
    assert len(train) == 13 and len(train.ids) == 13
    assert train.ids[5] == f"{uid(104)}:2:5" and train.ids[-1] == f"{uid(102)}:6:12"
    volumes = {s.uid: volume(s) for s in series}
    for i in range(len(train)):
        item = train[i]
        image, mask = item["image"].numpy(), item["mask"].numpy()
        assert image.shape == (7, CROP, CROP) and mask.shape == (CROP, CROP) and mask.dtype == np.uint8
        u, s, r, c = nodules[i % 4]
        # Locate the crop in the centre slice: the nodule centre must lie inside it, and the crop
        # inside the 40x40 window centred on the nodule.
        windows = sliding_window_view(volumes[u][s].astype(np.float32), (CROP, CROP))
        (r0,), (c0,) = np.nonzero((windows == image[3]).all(axis=(2, 3)))
        assert r0 <= r < r0 + CROP and c0 <= c < c0 + CROP
        assert r - WINDOW // 2 <= r0 and r0 + CROP <= r - WINDOW // 2 + WINDOW
        assert c - WINDOW // 2 <= c0 and c0 + CROP <= c - WINDOW // 2 + WINDOW
        assert mask[r - r0, c - c0] == 1 and mask.sum() == sphere(volumes[u].shape, (s, r, c))[s].sum()
        np.testing.assert_array_equal(image[0], volumes[u][max(s - 3, 0), r0 : r0 + CROP, c0 : c0 + CROP])


def test_training_crops_depend_on_seed_epoch_and_item_only(shared_luna, tmp_path: Path) -> None:
    """Through the trainer's loader: the same crops with 0 or 2 workers, new crops each epoch, and an
    epoch resumed after 8 samples continues with exactly the crops it would have drawn."""
    train = make(root=shared_luna[0], cache=tmp_path, epoch_samples=16).dataset("train")

    def draw(seed: int, epoch: int, workers: int, start: int = 0) -> torch.Tensor:
        loader = build_loader(train, batch_size=4, num_workers=workers, device=torch.device("cpu"),
                              shuffle_seed=seed, drop_last=True)
        loader.sampler.set_epoch(epoch, start=start)
        torch.manual_seed(123)  # the global stream plays no part
        return torch.cat([b["image"] for b in loader])

    first = draw(1, 1, 0)
    assert first.shape[0] == 16
    assert torch.equal(first, draw(1, 1, 2))
    assert torch.equal(first[8:], draw(1, 1, 0, start=8))
    assert not torch.equal(first, draw(1, 2, 0))
    assert not torch.equal(first, draw(2, 1, 0))
    assert torch.equal(train[3]["image"], train[3]["image"])  # outside training: one fixed crop per item
    assert len(pickle.dumps(train)) < 20_000  # workers get paths, never copies of the volumes


def test_cache_is_memmapped_bounded_and_reused(shared_luna, tmp_path: Path, monkeypatch) -> None:
    root, _ = shared_luna
    data = make(root, tmp_path)
    train = data.dataset("train")
    assert len(list(tmp_path.glob("luna16-*/*.hu.npy"))) == 3  # only what training needs so far
    store = train.store
    hu, mask = store.arrays(uid(102))
    assert isinstance(hu, np.memmap) and isinstance(mask, np.memmap)
    small = SeriesStore(store.entry, max_open=2)
    for u in (uid(102), uid(104), uid(106)):
        small.arrays(u)
    assert list(small._open) == [uid(104), uid(106)]

    monkeypatch.setattr(sitk, "ReadImage", _fail_read)
    again = make(root, tmp_path)
    assert len(again.dataset("train")) == 10
    with pytest.raises(AssertionError, match="cache should have been used"):
        again.dataset("val")  # validation series are not cached yet
    monkeypatch.undo()
    assert len(again.dataset("val")) == 9


def test_changed_threshold_uses_a_new_cache_entry(shared_luna, tmp_path: Path) -> None:
    root, _ = shared_luna
    make(root, tmp_path).dataset("val")
    wide = make(root, tmp_path, mask_threshold_hu=-900).dataset("val")
    assert len(list(tmp_path.glob("luna16-*"))) == 2
    assert len(wide) > 9  # the whole lung counts as tissue at -900 HU


def test_preview_six_evenly_spaced_slices_per_series(shared_luna, tmp_path: Path) -> None:
    root, _ = shared_luna
    data = make(root, tmp_path)
    assert data.preview_indices("val", 4) == [0, 1, 2, 3, 4, 5]  # one series, its 6 positive slices
    assert data.preview_indices("val", 12) == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # uid(103) has only 3
    assert data.preview_indices("val", 0) == []
    full = make(root, tmp_path, full_ct=True)
    assert full.preview_indices("val", 12) == [0, 5, 9, 14, 18, 23, 24, 29, 33, 38, 42, 47]
    assert full.preview_indices("train", 3) == [0, 4, 9]  # train: evenly spaced items


def test_errors_when_a_split_has_nothing_to_learn_or_score(luna_root, tmp_path: Path) -> None:
    root, _ = luna_root
    with pytest.raises(DatasetError, match="the 0 training series hold no annotated nodule"):
        make(root, tmp_path, max_series=1).dataset("train")
    lines = (root / "annotations.csv").read_text().splitlines()
    kept = [line for line in lines if uid(101) not in line and uid(103) not in line]
    (root / "annotations.csv").write_text("\n".join(kept) + "\n")
    message = "validation series have no slice with nodule mask: set dataset.full_ct=true"
    with pytest.raises(DatasetError, match=message):
        make(root, tmp_path).dataset("val")
    assert len(make(root, tmp_path, full_ct=True).dataset("val")) == 72
