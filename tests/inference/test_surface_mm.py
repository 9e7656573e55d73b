"""seg-eval surface=true on a dataset that gives a pixel spacing: metrics.json says mm, and the
distances are the px ones scaled by it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from seg.checkpoint import save_checkpoint
from seg.config import EvalConfig
from seg.data.base import ArrayDataset
from seg.engine import builders
from seg.inference.evaluate import run_eval
from seg.train.fit import fit
from tests.inference.test_tune import MODEL, darkness
from tests.tiny import compose_cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run's checkpoint with test_tune's DarkModel, whose masks are not empty (a model trained
    for one epoch predicts nothing, which has no distances to scale)."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(["trainer.epochs=1", "trainer.precision=32", "trainer.device=cpu"], run)
    fit(cfg, run)
    val = builders.build_data(cfg.dataset).dataset("val")
    image = torch.stack([val[i]["image"] for i in range(len(val))]).float() / 255
    cut = float(np.quantile(darkness(image).numpy(), 0.9))  # the darkest tenth: lesions are darker
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["config"]["model"] = {"_target_": MODEL, "in_channels": 3, "n_classes": 1, "cut": cut}
    return save_checkpoint({**ckpt, "model": {}}, run / "dark.pt")


def surface(checkpoint: Path, out: Path, **values: Any) -> dict[str, Any]:
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig),
                          {"ckpt": str(checkpoint), "device": "cpu", "split": "val", "out_dir": str(out),
                           "overlays": "none", "allowed_targets": [MODEL], "surface": True, **values})
    run_eval(cfg)
    return json.loads((out / "metrics.json").read_text())["surface"]


def test_a_spaced_dataset_is_reported_in_mm(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    px = surface(checkpoint, tmp_path / "px")
    assert px["distance_unit"] == "px"
    # The synthetic set as if its reader knew a 2 mm spacing (SIIM's and LUNA's datasets offer this method).
    monkeypatch.setattr(ArrayDataset, "pixel_spacing", lambda self, index: (2.0, 2.0), raising=False)
    mm = surface(checkpoint, tmp_path / "mm", surface_tolerance=4.0)
    assert mm["distance_unit"] == "mm" and mm["tolerance"] == 4.0
    lesion_px, lesion_mm = px["classes"]["lesion"], mm["classes"]["lesion"]
    assert lesion_mm["n_scored"] == lesion_px["n_scored"] > 0
    assert lesion_mm["hd95"] == pytest.approx(2 * lesion_px["hd95"])
    assert lesion_mm["assd"] == pytest.approx(2 * lesion_px["assd"])
    assert lesion_mm["surface_dice"] == pytest.approx(lesion_px["surface_dice"])
