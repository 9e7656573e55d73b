#!/usr/bin/env python
"""Is a resume exact on this device? Trains a small run straight, then the same run stopped in the
middle of epoch 2 (as SIGINT would stop it) and resumed, and compares the final weights bit for bit.

    python scripts/resume_check.py [--device cuda] [--deterministic] [seg-train overrides ...]

On a CPU the two are identical; on a GPU they are identical with --deterministic (cuDNN's autotuner
and atomic-add kernels otherwise differ in the last bits). Prints one line and exits 0 when equal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's seg, installed or not

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import seg.train.fit as fit_module  # noqa: E402
from seg.cli.common import config_dir  # noqa: E402

SMALL = ["dataset.n_images=48", "dataset.image_size=64", "trainer.batch_size=8", "model.depth=3", "model.wf=3",
         "augmentation=strong", "scheduler=cosine", "trainer.epochs=3", "trainer.preview_images=1"]
STEPS_PER_EPOCH = 4  # 48 images: 33 train at batch 8, drop_last -> 4 steps


def config(overrides: list[str], run_dir: Path):
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def run_stopped(cfg, run_dir: Path, after_steps: int) -> None:
    """fit() with a stop request before step `after_steps + 1` (checked where SIGINT is)."""
    real, asked = fit_module.train_one_epoch, {"n": 0}

    def stopping(*args, **kwargs):
        def should_stop() -> bool:
            asked["n"] += 1
            return asked["n"] > after_steps

        return real(*args, **{**kwargs, "should_stop": should_stop})

    fit_module.train_one_epoch = stopping
    try:
        fit_module.fit(cfg, run_dir)
    finally:
        fit_module.train_one_epoch = real


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    common = [*SMALL, f"trainer.device={args.device}", f"trainer.deterministic={str(args.deterministic).lower()}",
              *args.overrides]
    with tempfile.TemporaryDirectory(prefix="seg-resume-check-") as tmp:
        straight, stopped = Path(tmp) / "straight", Path(tmp) / "stopped"
        fit_module.fit(config(common, straight), straight)
        run_stopped(config(common, stopped), stopped, after_steps=STEPS_PER_EPOCH + 2)
        fit_module.fit(config([*common, "resume=auto"], stopped), stopped)
        a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (straight, stopped))
    differing = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    print(f"resume exact on {a['config']['trainer']['device']} (deterministic={args.deterministic}): "
          f"{not differing}" + (f"; {len(differing)} tensor(s) differ, e.g. {differing[0]}" if differing else ""))
    return 0 if not differing else 1


if __name__ == "__main__":
    raise SystemExit(main())
