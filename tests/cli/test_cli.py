"""The installed commands, run as a user runs them: help, config printing, training, evaluation, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.forked import MODULES, run_forked

BIN = Path(sys.executable).parent
TINY = ["dataset.n_images=20", "dataset.image_size=32", "trainer.batch_size=4", "model.depth=2", "model.wf=3",
        "trainer.preview_images=1"]


def run(cmd: str, *args: str, cwd: Path, env_extra: dict | None = None, fresh: bool = False
        ) -> subprocess.CompletedProcess:
    """`cmd *args` in its own process. fresh: the installed command in a new interpreter, as a user starts it;
    else a process forked from a warm interpreter, the same but for the 3 s of imports (tests/cli/forked.py)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    if not fresh:
        return run_forked(cmd, list(args), cwd, env)
    exe = BIN / cmd
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", MODULES[cmd]]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_help_and_cfg_job(tmp_path: Path) -> None:
    helped = run("seg-train", "--help", cwd=tmp_path, fresh=True)
    assert helped.returncode == 0 and "dataset: " in helped.stdout and "synthetic" in helped.stdout
    printed = run("seg-train", "--cfg", "job", "dataset=ph2", "dataset.root=/data/PH2Dataset", "model=segnet",
                  cwd=tmp_path, fresh=True)
    assert printed.returncode == 0, printed.stderr
    assert "_target_: seg.data.ph2.PH2Data" in printed.stdout and "root: /data/PH2Dataset" in printed.stdout


def test_train_then_eval_reproduces_validation_metrics(tmp_path: Path) -> None:
    train = run("seg-train", *TINY, "trainer.epochs=2", "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "train.log").is_file()
    assert "sha256=" in (run_dir / "train.log").read_text()
    ev = run("seg-eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "split=val", cwd=tmp_path, fresh=True)
    assert ev.returncode == 0, ev.stderr[-3000:]
    out = run_dir / "eval" / "best-val"
    metrics = json.loads((out / "metrics.json").read_text())
    import torch

    stored = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["metrics"]
    for key in ("dice", "iou", "precision", "recall", "f1", "dice_per_image", "loss"):
        assert metrics[key] == pytest.approx(stored[f"val/{key}"], abs=1e-4), key
    assert metrics["n_images"] == 2 and len(metrics["checkpoint_sha256"]) == 64
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert list(rows[0])[:5] == ["id", "dice", "iou", "precision", "recall"]  # then the detection columns
    assert len(rows) == 2 and all(r["id"].startswith("synthetic_") for r in rows)
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert "dice" in ev.stdout  # the printed table

    # dataset.* overrides the stored dataset config without Hydra's `+` (e.g. dataset.root=/moved).
    again = run("seg-eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "split=test", "dataset.split_seed=42",
                "overlays=none", f"out_dir={tmp_path / 'elsewhere'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    test_metrics = json.loads((tmp_path / "elsewhere" / "metrics.json").read_text())
    assert test_metrics["split"] == "test" and test_metrics["n_images"] == 4
    assert not (tmp_path / "elsewhere" / "overlays").exists()
    workers = run("seg-eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "split=val", "num_workers=2",
                  "overlays=none", f"out_dir={tmp_path / 'two'}", cwd=tmp_path)
    assert workers.returncode == 0, workers.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["dice"] == pytest.approx(metrics["dice"])
    negative = run("seg-eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "num_workers=-1", cwd=tmp_path)
    assert_user_error(negative, "num_workers must be >= 0")


def test_train_then_predict_new_images(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    train = run("seg-train", *TINY, "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    (tmp_path / "new").mkdir()
    Image.fromarray(np.full((45, 60, 3), 90, np.uint8)).save(tmp_path / "new" / "photo.jpg")
    helped = run("seg-predict", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "seg-predict ckpt=" in helped.stdout
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    pred = run("seg-predict", f"ckpt={best}", "input=new", "tta=true", cwd=tmp_path, fresh=True)
    assert pred.returncode == 0, pred.stderr[-3000:]
    mask = tmp_path / "run" / "predictions" / "new" / "masks" / "photo.png"
    assert np.asarray(Image.open(mask)).shape == (45, 60)
    assert_user_error(run("seg-predict", f"ckpt={best}", "input=missing", cwd=tmp_path), "input=missing does not exist")
    assert_user_error(run("seg-predict", f"ckpt={tmp_path / 'new' / 'photo.jpg'}", "input=new", cwd=tmp_path),
                      "not a readable seg checkpoint")


def test_missing_root_is_one_clear_message(tmp_path: Path) -> None:
    proc = run("seg-train", "dataset=ph2", cwd=tmp_path)
    assert_user_error(proc, "dataset.root")


def test_wrong_root_names_the_expected_layout(tmp_path: Path) -> None:
    proc = run("seg-train", "dataset=ph2", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert_user_error(proc, "PH2")


def test_bad_override_fails_at_start(tmp_path: Path) -> None:
    proc = run("seg-train", "trainer.epochs=many", cwd=tmp_path)
    assert proc.returncode != 0 and "trainer.epochs" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.pt"))


def test_eval_of_something_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_text("hello")
    proc = run("seg-eval", f"ckpt={bogus}", cwd=tmp_path)
    assert_user_error(proc, "not a readable seg checkpoint")
    assert bogus.read_text() == "hello"
    missing = run("seg-eval", cwd=tmp_path)
    assert missing.returncode != 0 and "ckpt" in missing.stderr
