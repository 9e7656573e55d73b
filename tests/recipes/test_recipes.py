"""Every recipe end to end, scaled down: a tiny tree in the dataset's official layout, the composed
recipe (its model, loss and dataset kept), one short training through fit(), then seg-eval on the
best checkpoint reproducing the validation metrics stored in it. Also: the recipes on the real sample
files when they are present (../shared/data, or SEG_SAMPLE_DATA), and a --multirun sweep through the
installed seg-train."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from recipe_fixtures import RECIPES, Recipe

from seg.checkpoint import load_checkpoint
from seg.data.base import IGNORE_INDEX
from seg.engine import builders
from seg.inference.evaluate import run_eval
from seg.train.fit import fit
from tests.cli.forked import run_forked

SAME_AS_CHECKPOINT = ("dice", "iou", "loss")


def check_items(recipe: Recipe, cfg) -> None:
    """Counts, shapes and value ranges of what the reader hands the engine for this recipe."""
    data = builders.build_data(cfg.dataset)
    assert (data.in_channels, data.n_classes) == (recipe.item_shape[0], cfg.dataset.n_classes)
    item = data.dataset("train")[0]
    assert tuple(item["image"].shape) == recipe.item_shape
    assert tuple(item["mask"].shape) == recipe.item_shape[1:] and item["mask"].dtype == torch.uint8
    classes = set(range(max(2, data.n_classes))) | {IGNORE_INDEX}
    assert set(item["mask"].unique().tolist()) <= classes
    weighted = recipe.loss == "seg.losses.WeightedBCELoss"
    assert ("weight" in item) == weighted
    if weighted:
        weight = item["weight"]  # class balance (< 1 on the frequent class) plus w0 near borders
        assert weight.shape == item["mask"].shape and 0 < float(weight.min()) < float(weight.max()) - 5.0


def check_run(run_dir: Path, recipe: Recipe, cfg, result: dict) -> dict:
    """Checkpoints, a split.json that a fresh build reproduces, the recipe's monitored metrics."""
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    split = json.loads((run_dir / "split.json").read_text())
    assert {k: len(v) for k, v in split.items()} == recipe.counts
    assert not set(split["train"]) & set(split["val"]) and not set(split["val"]) & set(split["test"])
    assert split == builders.build_data(cfg.dataset).split_ids()  # deterministic: same ids, same seed
    for key in (recipe.monitor, *recipe.keys, "val/dice", "val/iou", "val/loss"):
        assert key in result and math.isfinite(result[key]), key
    assert result["best_score"] == pytest.approx(result[recipe.monitor])
    return split


def check_eval(run_dir: Path, cfg, split_ids: dict, split: str, eval_cfg) -> None:
    """seg-eval on best.pt: reports, one CSV row per item of the split, overlays; on val the same
    numbers the checkpoint stored when it was saved."""
    best = run_dir / "checkpoints" / "best.pt"
    report = run_eval(eval_cfg([f"ckpt={best}", f"split={split}"]))
    out = run_dir / "eval" / f"best-{split}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == split and metrics["n_images"] == report["n_images"]
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = list(builders.build_data(cfg.dataset).dataset(split).ids)
    assert [r["id"] for r in rows] == expected and metrics["n_images"] == len(rows) > 0
    if cfg.dataset._target_.endswith("Luna16Data"):  # whole validation slices "<uid>:<slice>"
        assert {r["id"].split(":")[0] for r in rows} == set(split_ids[split])
    else:
        assert sorted(expected) == sorted(split_ids[split])
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert len(list((out / "overlays").glob("*.png"))) == min(8, len(rows))
    if split == "val":
        stored = load_checkpoint(best)["metrics"]
        for key in SAME_AS_CHECKPOINT:
            assert metrics[key] == pytest.approx(stored[f"val/{key}"], abs=1e-4), key


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_and_evaluates(name: str, tmp_path: Path, train_cfg, eval_cfg) -> None:
    recipe = RECIPES[name]
    root = recipe.write(tmp_path / "data")
    run_dir = tmp_path / "run"
    cfg = train_cfg([*recipe.overrides, f"dataset.root={root}"], run_dir)
    assert (cfg.model._target_, cfg.loss._target_, cfg.trainer.monitor) == (recipe.model, recipe.loss, recipe.monitor)
    check_items(recipe, cfg)

    result = fit(cfg, run_dir)
    assert result["epoch"] == 1
    split = check_run(run_dir, recipe, cfg, result)
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["monitor"] == recipe.monitor
    for split_name in recipe.eval_splits:
        check_eval(run_dir, cfg, split, split_name, eval_cfg)


@pytest.mark.parametrize(
    ("name", "sample", "counts"),
    [("ph2_segnet", "ph2-sample/PH2Dataset", {"train": 3, "val": 1, "test": 1}),
     ("pets_unet", "oxford-pets-sample", {"train": 8, "val": 1, "test": 5})],
)
def test_recipe_on_real_sample_files(
    shared_data: Path, name: str, sample: str, counts: dict, tmp_path: Path, train_cfg, eval_cfg
) -> None:
    recipe = RECIPES[name]
    run_dir = tmp_path / "run"
    cfg = train_cfg([*recipe.overrides, f"dataset.root={shared_data / sample}"], run_dir)
    check_items(recipe, cfg)
    result = fit(cfg, run_dir)
    split = check_run(run_dir, Recipe(**{**recipe.__dict__, "counts": counts}), cfg, result)
    for split_name in recipe.eval_splits:
        check_eval(run_dir, cfg, split, split_name, eval_cfg)


def test_multirun_sweep_through_the_installed_command(tmp_path: Path) -> None:
    """seg-train's own process, forked from a warm interpreter (tests/cli/forked.py): a sweep is about the
    jobs Hydra runs inside that process, not about starting it (tests/cli starts the console script)."""
    args = ["--multirun", "dataset.n_images=20", "dataset.image_size=32", "trainer.batch_size=4", "model.depth=2",
            "trainer.epochs=1", "trainer.preview_images=1", "model.wf=2,3", "hydra.sweep.dir=sweep"]
    proc = run_forked("seg-train", args, tmp_path, {**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = {}
    for job in ("0_model.wf=2", "1_model.wf=3"):
        best = tmp_path / "sweep" / job / "checkpoints" / "best.pt"
        assert best.is_file(), job
        ckpt = load_checkpoint(best)
        sizes[ckpt["config"]["model"]["wf"]] = sum(t.numel() for t in ckpt["model"].values())
    assert set(sizes) == {2, 3} and sizes[3] > sizes[2]
