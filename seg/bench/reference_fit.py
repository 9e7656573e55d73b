"""The tutorial-style reference loop trained epoch by epoch, validated after each: the reference side
of `seg-bench --to-quality`, run as its own process so that its start-up (interpreter, imports, data,
model) is timed the way seg-train's is.

`python -m seg.bench.reference_fit --config RESOLVED.yaml --out EPOCHS.jsonl` appends one JSON line per
epoch, `{"epoch": k, "time": <wall clock after validating>, "metrics": {"val/dice": ...}}`, and trains
up to `trainer.epochs`; the benchmark stops it (SIGTERM) once the target is reached. The config is the
one seg-train composes, resolved and written by the benchmark (no Hydra here, as in a tutorial script).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

from seg.bench.reference import ReferenceRun
from seg.engine import builders
from seg.metrics import SegMetrics


def fit_reference(cfg_path: Path, out: Path) -> None:
    cfg = OmegaConf.load(cfg_path)
    device = builders.resolve_device(cfg.trainer.device)
    data = builders.build_data(cfg.dataset)
    train, val = data.dataset("train"), data.dataset("val")
    run = ReferenceRun(cfg, data, device, n_samples=len(train))  # the whole training split, every epoch
    metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names,
                         kaggle=bool(getattr(data, "kaggle_metric", False)))
    mode = str(cfg.trainer.monitor_mode)
    # The config's schedule too (none by default), stepped as fit steps it: a recipe's warm-up or cosine
    # is part of the recipe both loops train, not of seg's engine.
    scheduler = builders.build_scheduler(cfg.get("scheduler"), run.optimizer, int(cfg.trainer.epochs), mode)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    with out.open("a") as f:
        for epoch in range(1, int(cfg.trainer.epochs) + 1):
            images = run.train_epoch()
            if scheduler is not None and not plateau:
                scheduler.step()
            values = {f"val/{k}": float(v) for k, v in run.validate(val, metrics).items()}
            if plateau:
                scheduler.step(values[str(cfg.trainer.monitor)])
            f.write(json.dumps({"epoch": epoch, "time": time.time(), "images": images, "metrics": values}) + "\n")
            f.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seg.bench.reference_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the resolved training config (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per validated epoch")
    args = parser.parse_args(argv)
    fit_reference(args.config, args.out)


if __name__ == "__main__":
    main()
