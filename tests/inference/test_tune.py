"""seg-eval split=val tune=true: the search scores candidates as the metrics would score their masks,
the settings land beside the checkpoint with its SHA-256, and seg-eval on test applies them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from seg.checkpoint import save_checkpoint, sha256
from seg.config import EvalConfig
from seg.engine import builders
from seg.errors import ConfigError
from seg.inference.evaluate import run_eval
from seg.inference.outputs import RECORD
from seg.inference.postprocess import FORMAT, Settings, apply, postprocess_path
from seg.inference.tune import TuneData, check_tuning, search
from seg.metrics import SegMetrics
from seg.train.fit import fit
from tests.tiny import compose_cfg

MODEL = f"{__name__}.DarkModel"
LOW = 0.35  # the probability at which the crafted model's mask is its best


def darkness(image: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W]: 1 - the mean intensity, smoothed (lesions of the synthetic set are darker)."""
    dark = 1 - image.mean(1, keepdim=True)
    return F.avg_pool2d(dark, 5, stride=1, padding=2, count_include_pad=False)


class DarkModel(torch.nn.Module):
    """A model whose best cut on its probabilities is LOW, not 0.5: logits shifted by logit(LOW)."""

    def __init__(self, *, in_channels: int, n_classes: int, cut: float, scale: float = 10.0) -> None:
        super().__init__()
        self.cut, self.scale, self.shift = cut, scale, math.log(LOW / (1 - LOW))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (darkness(x) - self.cut) + self.shift


def pooled_dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1))


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny run's checkpoint whose model is DarkModel, at the darkness cut best on val."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(["trainer.epochs=1", "trainer.precision=32", "trainer.device=cpu"], run)
    fit(cfg, run)
    val = builders.build_data(cfg.dataset).dataset("val")
    image = torch.stack([val[i]["image"] for i in range(len(val))]).float() / 255
    truth = torch.stack([val[i]["mask"] for i in range(len(val))]) == 1
    dark = darkness(image)[:, 0]
    cuts = np.arange(0.2, 0.8, 0.0025)
    cut = float(cuts[int(np.argmax([pooled_dice(dark > c, truth) for c in cuts]))])
    # the premise: thresholding the probabilities at 0.5 (darkness > cut + 0.062) is clearly worse
    assert pooled_dice(dark > cut, truth) > pooled_dice(dark > cut - math.log(LOW / (1 - LOW)) / 10, truth) + 0.01
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["config"]["model"] = {"_target_": MODEL, "in_channels": 3, "n_classes": 1, "cut": cut}
    return save_checkpoint({**ckpt, "model": {}}, tmp_path_factory.mktemp("crafted") / "best.pt")


@pytest.fixture
def best(crafted: Path, tmp_path: Path) -> Path:
    """Each test's own copy: the .postprocess.json lands beside it."""
    (tmp_path / "checkpoints").mkdir()
    return Path(shutil.copy(crafted, tmp_path / "checkpoints" / "best.pt"))


def evaluate(best: Path, out: Path, **values: Any) -> dict[str, Any]:
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig),
                          {"ckpt": str(best), "device": "cpu", "split": "val", "out_dir": str(out),
                           "overlays": "none", "allowed_targets": [MODEL], **values})
    return run_eval(cfg)


def test_tuning_on_val_is_stored_beside_the_checkpoint_and_applied_on_test(best: Path, tmp_path: Path) -> None:
    tuned = evaluate(best, tmp_path / "val", tune=True)
    record = json.loads(postprocess_path(best).read_text())
    assert record["format"] == FORMAT and record["checkpoint_sha256"] == sha256(best)
    assert record["objective"] == "val/dice" and record["mode"] == "max"  # the training's trainer.monitor
    assert record["score_after"] > record["score_before"]
    settings = Settings.from_dict(record["settings"])
    assert settings.threshold < 0.5 and settings.pixels_at == (32, 32)
    assert tuned["postprocess"] is None and tuned["tuning"]["settings"] == settings.describe()  # this pass: raw

    again = evaluate(best, tmp_path / "val2")  # the settings apply now, scored exactly (not rounded to 1/255)
    assert again["postprocess"] == settings.describe()
    assert again["dice"] == pytest.approx(record["score_after"], abs=0.02) and again["dice"] > tuned["dice"]
    applied = evaluate(best, tmp_path / "test", split="test")
    plain = evaluate(best, tmp_path / "plain", split="test", postprocess=False)
    assert applied["postprocess"] == settings.describe() and plain["postprocess"] is None
    assert applied["dice"] != plain["dice"] and applied["raw"]["dice"] == plain["dice"]


def test_tuning_refuses_test_the_loss_and_a_file_it_did_not_write(best: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tune=true on split=test"):
        evaluate(best, tmp_path / "a", split="test", tune=True)
    with pytest.raises(ConfigError, match="does not depend on post-processing"):
        evaluate(best, tmp_path / "a", tune=True, tune_objective="val/loss")
    with pytest.raises(ConfigError, match="val/dice_kagle is not a metric"):
        evaluate(best, tmp_path / "a", tune=True, tune_objective="val/dice_kagle")
    with pytest.raises(ConfigError, match="binary models only"):
        check_tuning("val", 3)
    postprocess_path(best).write_text("my notes")
    with pytest.raises(ConfigError, match="is not a seg post-processing record; it is kept"):
        evaluate(best, tmp_path / "a", tune=True)
    assert postprocess_path(best).read_text() == "my notes" and not (tmp_path / "a").exists()


def test_another_checkpoints_settings_are_not_applied(best: Path, tmp_path: Path, caplog) -> None:
    record = {"format": FORMAT, "checkpoint_sha256": "0" * 64, "settings": {"threshold": 0.3}}
    postprocess_path(best).write_text(json.dumps(record))  # a later best.pt replaced the tuned one
    assert evaluate(best, tmp_path / "a", split="test")["postprocess"] is None
    assert "tuned for another checkpoint" in caplog.text and "not applied" in caplog.text
    assert evaluate(best, tmp_path / "b", split="test", postprocess=False)["postprocess"] is None


def test_surface_detection_and_calibration_reports(best: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = evaluate(best, out, split="test", surface=True)
    metrics = json.loads((out / "metrics.json").read_text())
    surface = metrics["surface"]
    assert surface["distance_unit"] == "px" and surface["tolerance"] == 2.0  # the synthetic set has no spacing
    lesion = surface["classes"]["lesion"]
    counted = lesion["n_scored"] + lesion["n_one_empty"] + lesion["n_both_empty"]
    assert lesion["n_images"] == report["n_images"] == counted
    assert 0 <= metrics["calibration"]["ece"] <= 1 and metrics["mean_includes_background"] is False
    assert set(metrics["per_class"]["lesion"]["dice"]) == {"mean", "std", "median"}
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["id", "dice", "iou", "precision", "recall"]
    assert header[-3:] == ["hd95", "assd", "surface_dice"]
    assert "reliability.png" in json.loads((out / RECORD).read_text())["files"]


def tune_data() -> TuneData:
    """Positives: a 64-px blob at 0.85 in a ring at 0.45 (truth: the blob and half the ring); empties:
    small spurious blobs at 0.6 and 0.7; everywhere a faint 0.2."""
    data = TuneData()
    for i in range(10):
        p = np.full((24, 24), 0.2)
        truth = np.zeros((24, 24), np.uint8)
        if i % 2 == 0:
            p[6:16, 6:16] = 0.45
            p[7:15, 7:15] = 0.85
            truth[6:16, 6:11] = 1
            truth[7:15, 7:15] = 1
            p[20:22, 1:3] = 0.6  # a 4-px false positive
        else:
            p[2 + i : 5 + i, 3:5] = 0.6 if i % 4 == 1 else 0.7
        truth[0, :] = 255 if i == 3 else truth[0, :]  # a row not scored
        data.add(torch.from_numpy(p).float()[None, None], torch.from_numpy(truth)[None].long())
    return data


def rescore(data: TuneData, settings: Settings, key: str) -> float:
    """The metric of `apply`'s masks of the stored probabilities: what the search must agree with."""
    metrics = SegMetrics(1, kaggle=True)
    for q, truth in zip(data.probs, data.truth):
        mask = apply(q.astype(np.float64) / 255, settings)
        metrics.update_prediction(torch.from_numpy(mask).long()[None], torch.from_numpy(truth).long()[None])
    return metrics.compute()[key]


@pytest.mark.parametrize("key", ["dice", "dice_kaggle"])
def test_the_search_scores_each_candidate_as_its_masks_score(key: str) -> None:
    data = tune_data()
    result = search(data, key, "max", kaggle=True)
    assert result.after > result.before == pytest.approx(rescore(data, Settings(), key))
    assert result.after == pytest.approx(rescore(data, result.settings, key), abs=1e-12)
    assert result.settings.pixels_at == (24, 24) and result.n_candidates > 100
    if key == "dice_kaggle":  # per image, the empties' spurious blobs cost a whole image each
        assert result.settings.empty_threshold is not None or result.settings.min_size > 0
    assert result.searched["empty_rules"]  # the split holds empty and non-empty images
