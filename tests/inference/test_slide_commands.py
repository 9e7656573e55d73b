"""Slide mode through seg-eval and seg-predict: which mode and window a run uses (command line over
the checkpoint's recipe over the training size), scoring and predicting with windows, and what
seg-predict writes (palette masks, overlays, predictions.csv's record of how masks were made)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from seg.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from seg.config import EvalConfig, InferenceConfig, InferenceMode, PredictConfig
from seg.errors import ConfigError
from seg.inference.core import resolve_inference
from seg.inference.evaluate import run_eval
from seg.inference.predict import run_predict
from seg.logger.overlay import CLASS_PALETTE
from seg.models import UNet
from seg.train.fit import fit
from tests.tiny import compose_cfg

SLIDE = {"inference": {"mode": "slide"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic U-Net (3 channels, binary, 32x32 images) trained for one epoch."""
    run = tmp_path_factory.mktemp("run")
    fit(compose_cfg(["trainer.epochs=1", "trainer.precision=32"], run), run)
    return run / "checkpoints" / "best.pt"


def command(schema: type, **values):
    return OmegaConf.merge(OmegaConf.structured(schema), {"device": "cpu", **values})


def node(**values) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.structured(InferenceConfig), values)


def test_the_command_line_wins_over_the_recipe_over_the_training_size() -> None:
    sized = {"dataset": {"image_size": 32}}
    assert resolve_inference(node(), sized).mode == InferenceMode.resize  # no recipe: today's behaviour
    assert resolve_inference(node(), {**sized, "inference": {"mode": "slide"}}).window == (32, 32)
    assert not resolve_inference(node(mode="resize"), {**sized, "inference": {"mode": "slide"}}).sliding
    assert resolve_inference(node(mode="slide"), {"dataset": {"image_size": [48, 40]}}).window == (48, 40)
    # Crop-trained sets (LUNA16) slide windows of the crop size over native-size images.
    luna = {"dataset": {"image_size": None, "crop_size": 64}, "inference": {"mode": "slide", "window": None}}
    assert resolve_inference(node(), luna).window == (64, 64)
    assert resolve_inference(node(window=[96, 80]), {**luna, "inference": {"mode": "slide", "window": 128}}
                             ).window == (96, 80)
    assert resolve_inference(node(), {**luna, "inference": {"mode": "slide", "window": 128}}).window == (128, 128)
    how = resolve_inference(node(mode="slide", overlap=0.25, batch=2), sized, tta=True)
    assert (how.overlap, how.batch, how.tta) == (0.25, 2, True)
    assert "sliding windows 32x32, overlap 0.25, flip TTA" == how.describe()


@pytest.mark.parametrize("values, stored, message", [
    ({"mode": "slide"}, {"dataset": {"image_size": None}}, "inference.window=SIZE"),
    ({"mode": "slide", "window": [32, 0]}, {}, "positive int"),
    ({"mode": "slide", "window": "big"}, {}, "positive int"),
    ({"overlap": 1.0}, {}, r"\[0, 1\)"),
    ({"batch": 0}, {}, "batch=0"),
    ({}, {"inference": {"mode": "tiles"}}, "resize or slide"),
])  # fmt: skip
def test_bad_settings_fail_with_one_line(values: dict, stored: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_inference(values, stored)


def eval_cfg(ckpt: Path, out: Path, **values):
    return command(EvalConfig, **{"ckpt": str(ckpt), "split": "val", "out_dir": str(out), "overlays": "none", **values})


def untrained(trained: Path, target: Path) -> Path:
    """The trained run's checkpoint with random weights whose output varies: one epoch predicts all
    background, and scores of 0 would match whatever the mode."""
    ckpt = load_checkpoint(trained)
    torch.manual_seed(0)
    model = UNet(**{k: v for k, v in ckpt["config"]["model"].items() if k != "_target_"}).eval()
    with torch.no_grad():  # a fresh U-Net's logits barely vary: widen them, centred on 0
        model.last.weight *= 100
        model.last.bias -= model(torch.rand(4, 3, 32, 32)).median()
    ckpt["model"] = model.state_dict()
    save_checkpoint(ckpt, target)
    return target


def test_eval_slides_at_the_training_size_as_resize_does_and_at_larger_sizes(trained: Path, tmp_path: Path) -> None:
    model = untrained(trained, tmp_path / "random.pt")
    resized = run_eval(eval_cfg(model, tmp_path / "resize"))
    slid = run_eval(eval_cfg(model, tmp_path / "slide", **SLIDE))
    assert resized["inference"] == "resize mode" and slid["inference"] == "sliding windows 32x32, overlap 0.5"
    assert 0.05 < resized["dice"] < 0.95
    for key in ("dice", "iou", "precision", "recall", "dice_per_image", "loss"):
        assert slid[key] == pytest.approx(resized[key], abs=1e-5)
    # A higher resolution than training: windows of the training size over 64x64 images.
    large = run_eval(eval_cfg(model, tmp_path / "large", dataset={"image_size": 64}, overlays="all", **SLIDE))
    assert large["n_images"] == resized["n_images"] and 0 <= large["dice"] <= 1
    overlay = next((tmp_path / "large" / "overlays").glob("*.png"))
    assert Image.open(overlay).size[1] >= 64  # drawn from the sliding prediction at 64x64
    assert json.loads((tmp_path / "large" / "metrics.json").read_text())["inference"].startswith("sliding")


def test_a_stored_recipe_sets_the_default_mode(trained: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained)
    ckpt["config"]["inference"] = {"mode": "slide", "window": 16}
    save_checkpoint(ckpt, tmp_path / "recipe.pt")
    assert run_eval(eval_cfg(tmp_path / "recipe.pt", tmp_path / "a"))["inference"].startswith("sliding windows 16x16")
    chosen = run_eval(eval_cfg(tmp_path / "recipe.pt", tmp_path / "b", inference={"mode": "resize"}))
    assert chosen["inference"] == "resize mode"


def test_predict_slides_each_image_at_its_own_size(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 90), np.uint8)).save(folder / "sub" / "b.png")
    out = tmp_path / "out"
    run_predict(command(PredictConfig, ckpt=str(trained), input=str(folder), out_dir=str(out), tta=True,
                        overlays=True, inference={"mode": "slide", "overlap": 0.25}))
    a, b = (Image.open(out / "masks" / name) for name in ("a.png", "sub/b.png"))
    assert (a.mode, a.size, b.size) == ("L", (50, 70), (90, 20))  # binary masks stay 0/255 grey
    assert set(np.unique(np.asarray(a))) <= {0, 255}
    assert Image.open(out / "overlays" / "sub" / "b.png").size == (90, 20)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(r["tta"], r["sliding"], r["input_size"], r["postprocess"]) for r in rows] == [
        ("true", "true", "32x32", "none")] * 2
    record = json.loads((out / ".seg-written.json").read_text())["files"]
    assert {"overlays/a.png", "overlays/sub/b.png", "masks/a.png", "predictions.csv"} <= set(record)


def test_multi_class_masks_are_palette_pngs_of_class_ids(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=3, n_classes=3, depth=2, wf=2)
    config = {"dataset": {"_target_": "seg.data.folder.FolderData", "image_size": 32},
              "model": {"_target_": "seg.models.UNet", "in_channels": 3, "n_classes": 3, "depth": 2, "wf": 2,
                        "padding": True, "batch_norm": False, "up_mode": "upconv"},
              "loss": {"_target_": "seg.losses.DiceBCELoss"}, "trainer": {"precision": "32"}}
    save_checkpoint(make_checkpoint(model=model.state_dict(), config=config, epoch=1), tmp_path / "model.pt")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 30, 3), np.uint8)).save(tmp_path / "x.png")
    run_predict(command(PredictConfig, ckpt=str(tmp_path / "model.pt"), input=str(tmp_path / "x.png"),
                        out_dir=str(tmp_path / "out"), overlays=True))
    mask = Image.open(tmp_path / "out" / "masks" / "x.png")
    ids = np.asarray(mask)
    assert mask.mode == "P" and ids.shape == (40, 30) and ids.max() <= 2
    palette = mask.getpalette()[: 3 * 3]
    assert [tuple(palette[i : i + 3]) for i in (0, 3, 6)] == [tuple(c) for c in CLASS_PALETTE[:3]]
    (row,) = csv.DictReader((tmp_path / "out" / "predictions.csv").open())
    assert (row["sliding"], row["input_size"], row["tta"]) == ("false", "32x32", "false")
    assert [int(n) for n in row["class_pixels"].split()] == np.bincount(ids.ravel(), minlength=3).tolist()
    drawn = np.asarray(Image.open(tmp_path / "out" / "overlays" / "x.png"))
    assert drawn.shape == (40, 30, 3)
