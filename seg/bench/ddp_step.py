"""One process of `seg-bench --nproc N`: the training step of seg-train timed inside one rank.

`python -m seg.bench.ddp_step --config RESOLVED.yaml --out RANKS.json [--warmup W] [--steps S]
[--sync-every K]` runs alone (the one-process baseline: the plain model) or under
`torch.distributed.run` (every rank joins the process group as seg-train does, trains the DDP-wrapped
model on its shard). Start-up (interpreter, imports, data, model, DDP's first broadcast) and the warm-up
steps come before a barrier, so every rank starts its timed steps together and none of that is timed.
Rank 0 gathers each rank's figures and writes them, in rank order, as one JSON list. The config is the
one seg-bench composed, resolved, with the data cache it already built (no Hydra here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seg import distributed
from seg.bench.measure import sync, time_steps
from seg.bench.seg_path import SegRun
from seg.cli.common import user_errors
from seg.engine import builders
from seg.errors import OneLineParser
from seg.train import parallel

PROG = "seg-bench"  # the user's command: a rank's error line reads as the benchmark's own


def time_rank(cfg: DictConfig, *, warmup: int, steps: int, sync_every: int) -> dict[str, Any]:
    """This rank's timed steps (after its warm-up and a barrier), as StepTimes.summary() plus where it ran."""
    began = time.perf_counter()
    device = builders.resolve_device(cfg.trainer.device)
    d = distributed.join(device.type)  # one process: a no-op
    device = parallel.rank_device(device, d)
    cfg.trainer.num_workers = builders.resolve_num_workers(cfg.trainer.num_workers, device)  # per process, as seg-train
    data = builders.build_data(cfg.dataset)  # opens the cache seg-bench built
    run = SegRun(cfg, data, device, dist=d if d.enabled else None)
    run.start()
    try:
        for _ in range(warmup):
            run.step()
        sync(device)
        distributed.barrier()
        startup = time.perf_counter() - began
        times = time_steps(run.step, warmup=0, steps=steps, device=device, sync_every=sync_every)
    finally:
        run.close()
    return {"rank": d.rank, "device": str(device), "torch_threads": torch.get_num_threads(),
            "num_workers": int(cfg.trainer.num_workers), "train_images_per_epoch": len(run.train_ds) // d.world,
            "startup_seconds": startup, **times.summary()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m seg.bench.ddp_step", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the resolved training config (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="JSON list of every rank's figures (rank 0 writes)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sync-every", type=int, default=1)
    args = parser.parse_args(argv)
    with user_errors(PROG):
        cfg = OmegaConf.load(args.config)
        try:
            mine = time_rank(cfg, warmup=args.warmup, steps=args.steps, sync_every=args.sync_every)
            ranks = distributed.gather(mine)
        finally:
            distributed.leave()
        if mine["rank"] == 0:
            args.out.write_text(json.dumps(ranks, indent=1))


if __name__ == "__main__":
    distributed.run_entry(main)  # a torchrun worker skips the teardown where gloo's threads can abort it
