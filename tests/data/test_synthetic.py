"""The built-in synthetic set: deterministic, configurable, binary, and lesions that are learnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.data.synthetic import SyntheticData, render_case
from seg.errors import ConfigError, DatasetError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DRAW = dict(seed=0, size=(32, 32), min_blobs=1, max_blobs=3, empty_fraction=0.05, noise_std=8.0)


def test_defaults_give_the_documented_set() -> None:
    data = SyntheticData()
    assert (data.n_images, data.image_size, data.root) == (240, (64, 64), None)
    assert (data.in_channels, data.n_classes, data.class_names) == (3, 1, ["lesion"])
    ids = data.list_cases()
    assert ids[0] == "synthetic_0000" and ids[-1] == "synthetic_0239" and len(set(ids)) == 240
    assert {k: len(v) for k, v in data.split_ids().items()} == {"train": 168, "val": 24, "test": 48}


def test_items_are_uint8_images_and_binary_masks() -> None:
    data = SyntheticData(n_images=20, image_size=[24, 40])
    item = data.dataset("val")[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 40)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (24, 40)
    assert set(np.unique(data.arrays.masks).tolist()) <= {0, 1}
    assert data.arrays.masks.sum() > 0


def test_rendering_is_deterministic_and_seeded() -> None:
    image, mask = render_case(3, **DRAW)
    np.random.seed(123)  # the global seeds must not matter
    torch.manual_seed(123)
    again_image, again_mask = render_case(3, **DRAW)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(mask, again_mask)
    assert not np.array_equal(render_case(4, **DRAW)[0], image)
    assert not np.array_equal(render_case(3, **{**DRAW, "seed": 1})[0], image)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and mask.dtype == np.uint8


def test_cached_arrays_match_a_fresh_rendering() -> None:
    data = SyntheticData(n_images=12, image_size=16, seed=5)
    fresh = SyntheticData(n_images=12, image_size=16, seed=5)
    for i, case in enumerate(data.arrays.ids):
        image, mask = fresh.load_case(case)
        np.testing.assert_array_equal(data.arrays.images[i], image)
        np.testing.assert_array_equal(data.arrays.masks[i], mask)
    other = SyntheticData(n_images=12, image_size=16, seed=6)
    assert not np.array_equal(other.arrays.images, data.arrays.images)


def test_lesions_are_darker_than_skin() -> None:
    contrasts = []
    for i in range(20):
        image, mask = render_case(i, **{**DRAW, "empty_fraction": 0.0})
        grey = image.astype(float).mean(-1)
        contrasts.append(grey[mask == 1].mean() - grey[mask == 0].mean())
    assert max(contrasts) < -10 and np.mean(contrasts) < -30


def test_not_separable_by_one_threshold() -> None:
    """A global grey threshold should do clearly worse than a trained network (Dice > 0.8)."""
    cases = [render_case(i, **{**DRAW, "size": (48, 48)}) for i in range(40)]
    grey = np.stack([c[0] for c in cases]).astype(float).mean(-1)
    masks = np.stack([c[1] for c in cases]).astype(bool)
    dice = [2 * (masks & (grey < t)).sum() / (masks.sum() + (grey < t).sum()) for t in range(60, 200, 5)]
    assert 0.5 < max(dice) < 0.85


def test_blob_count_and_empty_fraction() -> None:
    masks = lambda **kw: [render_case(i, **{**DRAW, **kw})[1] for i in range(30)]  # noqa: E731
    assert all(m.sum() == 0 for m in masks(empty_fraction=1.0))
    assert all(m.sum() > 0 for m in masks(empty_fraction=0.0))
    assert all(m.sum() == 0 for m in masks(min_blobs=0, max_blobs=0))
    fractions = [m.mean() for m in masks(empty_fraction=0.0)]
    assert 0.03 < np.mean(fractions) < 0.4
    # Default settings: mostly lesions, a few empty images.
    empty = sum(render_case(i, **DRAW)[1].sum() == 0 for i in range(240))
    assert 3 <= empty <= 25


def test_noise_std_sets_the_pixel_noise() -> None:
    clean, _ = render_case(0, **{**DRAW, "noise_std": 0.0})
    noisy, _ = render_case(0, **{**DRAW, "noise_std": 20.0})
    residual = noisy.astype(float) - clean.astype(float)
    assert 15 < residual.std() < 25


def test_cache_fields_hold_the_generator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = SyntheticData(n_images=10, image_size=16).cache_fields()
    for key in ("n_images", "seed", "min_blobs", "max_blobs", "empty_fraction", "noise_std", "generator"):
        assert key in fields
    first = SyntheticData(n_images=10, image_size=16, max_blobs=2).arrays

    def no_render(self: SyntheticData, case_id: str) -> None:
        raise AssertionError(f"{case_id} drawn again")

    monkeypatch.setattr(SyntheticData, "load_case", no_render)
    assert SyntheticData(n_images=10, image_size=16, max_blobs=2).arrays.path == first.path
    with pytest.raises(AssertionError, match="drawn again"):
        SyntheticData(n_images=10, image_size=16, max_blobs=3).arrays


def test_yaml_builds_the_default_set(tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONFIGS / "dataset" / "synthetic.yaml")
    cfg.cache_dir = str(tmp_path)
    cfg.n_images = 20
    data = instantiate(cfg)
    assert isinstance(data, SyntheticData)
    assert (data.seed, data.min_blobs, data.max_blobs, data.empty_fraction, data.noise_std) == (0, 1, 3, 0.05, 8.0)
    assert data.image_size == (64, 64) and data.ratios == {"train": 0.7, "val": 0.1, "test": 0.2}
    assert {k: len(v) for k, v in data.split_ids().items()} == {"train": 14, "val": 2, "test": 4}
    assert any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"root": "/data"}, "reads no files"),
        ({"n_images": 0}, "n_images=0"),
        ({"image_size": 4}, "image_size"),
        ({"min_blobs": 3, "max_blobs": 1}, "min_blobs=3"),
        ({"empty_fraction": 1.5}, "empty_fraction"),
        ({"noise_std": -1}, "noise_std"),
        ({"in_channels": 1}, "in_channels"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticData(**kwargs)


def test_unknown_case_id() -> None:
    with pytest.raises(DatasetError, match="synthetic_0010"):
        SyntheticData(n_images=10).load_case("synthetic_0010")
