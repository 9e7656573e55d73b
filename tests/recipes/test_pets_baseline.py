"""scripts/pets_baseline.py, the hand-written script docs/recipes.md compares pets_unet against, runs on
the official Pets layout and scores the test list with seg's metrics."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pets_baseline.py"


COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=np.float64)  # pet, background, border


def write_clean_pets(root: Path, trainval: list[str], test: list[str], size: int = 16) -> None:
    """images/*.jpg, annotations/trimaps/*.png (values 1-3) and the two split lists, nothing else. Each
    pixel's colour tells its class, so a script that reads, flips and scores them right learns it."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in trainval + test:
        blocks = rng.integers(0, 3, (size // 4, size // 4))
        classes = np.kron(blocks, np.ones((4, 4), dtype=np.int64))  # 4x4 blocks, one class each
        image = np.clip(COLOURS[classes] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray((classes + 1).astype(np.uint8), mode="L").save(root / "annotations" / "trimaps" / f"{name}.png")
    for split, names in (("trainval", trainval), ("test", test)):
        lines = [f"{name} 1 1 1" for name in names]  # the official "<id> <class> <species> <breed>" rows
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def run_baseline(root: Path, seed: int) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(root), "--seed", str(seed), "--epochs", "15", "--size", "16", "--batch", "2"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_baseline_learns_the_trimaps_and_scores_the_test_list(tmp_path: Path) -> None:
    write_clean_pets(tmp_path, [f"Abyssinian_{i}" for i in range(1, 7)], ["beagle_1", "beagle_2"])
    lines = run_baseline(tmp_path, seed=1)
    assert [line.split()[:2] for line in lines[:2]] == [["epoch", "1"], ["epoch", "2"]] and len(lines) == 16
    scores = ast.literal_eval(lines[-1])
    assert set(scores) == {"iou", "iou_pet", "iou_background", "iou_border", "dice"}
    # Guessing scores about 0.2 IoU a class; colour -> class is learnt and scored only if the trimap values
    # map to the right classes and the images and trimaps are read for the same ids.
    assert min(scores["iou_pet"], scores["iou_background"], scores["iou_border"]) > 0.5, scores
    without_times = lambda out: [line.rsplit(" ", 1)[0] if line.startswith("epoch") else line for line in out]  # noqa: E731
    assert without_times(run_baseline(tmp_path, seed=1)) == without_times(lines)  # --seed makes a run repeatable
