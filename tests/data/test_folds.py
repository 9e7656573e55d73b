"""dataset.folds / dataset.fold: K folds of train+val by the split seed, the test split untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seg.data.split import check_folds, fold_split, seeded_split, write_split
from seg.data.synthetic import SyntheticData
from seg.errors import ConfigError
from tests.data.test_siim import kaggle_root, write_png_split  # noqa: F401 (kaggle_root: the fixture)
from tests.data.test_siim import make as make_siim
from tests.test_config import compose_train, options

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IDS = [f"case{i:03d}" for i in range(53)]
RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def folds_of(ids: list[str], k: int, seed: int = 42, strata: dict | None = None) -> list[dict[str, list[str]]]:
    base = seeded_split(ids, RATIOS, seed)
    return [fold_split(ids, base["test"], k, f, seed, strata) for f in range(k)]


@pytest.mark.parametrize("k", [3, 5])
def test_folds_keep_the_test_split_and_partition_train_and_val(k: int) -> None:
    base = seeded_split(IDS, RATIOS, 42)
    pool = set(base["train"]) | set(base["val"])
    vals = []
    for split in folds_of(IDS, k):
        assert split["test"] == base["test"]  # the same ids for the same seed, whatever K
        assert set(split["train"]) | set(split["val"]) == pool and not set(split["train"]) & set(split["val"])
        assert split["train"] == sorted(split["train"]) and split["val"] == sorted(split["val"])
        vals.append(set(split["val"]))
    assert set().union(*vals) == pool and sum(len(v) for v in vals) == len(pool)  # disjoint, covering
    assert max(map(len, vals)) - min(map(len, vals)) <= 1


def test_folds_null_keeps_the_seeded_split() -> None:
    assert check_folds(None, 0) == (None, 0) and check_folds(None, None) == (None, 0)
    plain = SyntheticData(n_images=30, image_size=16)
    assert plain.split_ids() == seeded_split(plain.list_cases(), RATIOS, 42)


def test_folds_are_deterministic_for_a_seed_and_listing_order() -> None:
    assert folds_of(IDS, 4) == folds_of(list(reversed(IDS)), 4)
    assert folds_of(IDS, 4, seed=1) != folds_of(IDS, 4, seed=2)


def test_stratified_folds_keep_the_share_of_empty_masks() -> None:
    strata = {c: i % 5 == 0 for i, c in enumerate(IDS)}  # about one case in five has foreground
    base = seeded_split(IDS, RATIOS, 42)
    pool = base["train"] + base["val"]
    for k in (3, 5):
        folds = folds_of(IDS, k, strata=strata)
        for label in (True, False):
            share = sum(strata[c] == label for c in pool) / k
            for split in folds:
                assert abs(sum(strata[c] == label for c in split["val"]) - share) < 1  # within one case
        sizes = [len(s["val"]) for s in folds]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("folds", "fold", "message"), [
    (1, 0, "expected an integer >= 2"), (True, 0, "expected an integer >= 2"), ("3", 0, "expected an integer >= 2"),
    (3, 3, "0 <= fold < folds=3"), (3, -1, "0 <= fold < folds=3"), (None, 2, "needs dataset.folds=K"),
])
def test_bad_fold_settings_fail_at_construction(folds: object, fold: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticData(n_images=10, folds=folds, fold=fold)


def test_a_fold_that_would_be_empty_is_one_config_error() -> None:
    data = SyntheticData(n_images=6, image_size=16, folds=6, fold=0)  # 6 cases: 5 train+val, 1 test
    with pytest.raises(ConfigError, match="a fold would be empty") as caught:
        data.split_ids()
    assert "\n" not in str(caught.value)


def test_the_yaml_reader_gives_each_folds_split(tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONFIGS / "dataset" / "synthetic.yaml")
    assert cfg.folds is None and cfg.fold == 0
    cfg.n_images, cfg.image_size, cfg.folds = 30, 16, 3
    default = instantiate(OmegaConf.merge(cfg, {"folds": None})).split_ids()
    vals = []
    for k in range(3):
        split = instantiate(OmegaConf.merge(cfg, {"fold": k})).split_ids()
        write_split(tmp_path / f"split{k}.json", split)  # as the engine writes split.json
        stored = json.loads((tmp_path / f"split{k}.json").read_text())
        assert stored == fold_split(sum(default.values(), []), default["test"], 3, k, 42)
        assert stored["test"] == default["test"]
        vals.append(stored["val"])
    assert sorted(sum(vals, [])) == sorted(default["train"] + default["val"])
    # Another split seed gives other folds, and another test split, as it does without folds.
    other = instantiate(OmegaConf.merge(cfg, {"split_seed": 7})).split_ids()
    assert other["test"] == instantiate(OmegaConf.merge(cfg, {"split_seed": 7, "folds": None})).split_ids()["test"]


def test_siim_dicom_folds_are_stratified_by_the_csv(kaggle_root: dict) -> None:  # noqa: F811
    data = make_siim(kaggle_root["root"], folds=2, fold=1, split={"train": 0.75, "val": 0.0, "test": 0.25})
    split = data.split_ids()
    positive = set(kaggle_root["masks"])
    strata = data.fold_strata(split["train"] + split["val"])
    assert strata == {c: c in positive for c in split["train"] + split["val"]}
    plain = make_siim(kaggle_root["root"], split={"train": 0.75, "val": 0.0, "test": 0.25}).split_ids()
    assert split["test"] == plain["test"]
    for label in (True, False):
        share = sum(v == label for v in strata.values()) / 2
        assert abs(sum(strata[c] == label for c in split["val"]) - share) < 1


def test_fixed_splits_refuse_folds_in_one_line(tmp_path: Path) -> None:
    write_png_split(tmp_path, "train", ["a", "b", "c"], "images", "masks")
    write_png_split(tmp_path, "val", ["d", "e"], "images", "masks")
    with pytest.raises(ConfigError, match="PNG layout's split folders") as caught:
        make_siim(tmp_path, image_size=40, folds=2).split_ids()
    assert "\n" not in str(caught.value)


FOLDED = ["ph2", "synthetic", "folder", "siim", "pets"]


@pytest.mark.parametrize("name", FOLDED)
def test_the_fold_keys_compose_and_build_for_every_seeded_reader(name: str) -> None:
    cfg = compose_train([f"dataset={name}", "dataset.folds=3", "dataset.fold=2"])
    settings = OmegaConf.to_container(cfg.dataset, resolve=True)
    if name != "synthetic":
        settings["root"] = "/data"  # construction reads no file: only splitting does
    data = instantiate(settings)
    assert (data.folds, data.fold) == (3, 2)
    assert compose_train([f"dataset={name}"]).dataset.folds is None


@pytest.mark.parametrize("name", sorted(set(options("dataset")) - set(FOLDED)))
def test_readers_with_a_fixed_split_have_no_fold_keys(name: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_train([f"dataset={name}", "dataset.folds=3"])


def test_isbi_refuses_fold_keys_given_with_plus() -> None:
    from seg.data.isbi import ISBI2012Data

    with pytest.raises(TypeError, match="'folds'"):
        ISBI2012Data(root="/data", folds=3)
