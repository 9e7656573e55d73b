"""What a data-parallel run (torchrun, or a SLURM job's tasks) changes in a training run, in one place:
the device of each process, SyncBatchNorm, the DistributedDataParallel wrapper, the per-rank random
streams a checkpoint keeps, and the stop all processes agree on. With one process each function
returns what the ordinary run uses, so seg/train/run.py and fit.py read the same either way.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from seg import distributed
from seg.distributed import Dist
from seg.engine.seeding import rng_state, seed_everything, set_rng_state
from seg.errors import CheckpointError, ConfigError
from seg.train.signals import GracefulStop

log = logging.getLogger("seg")


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """One GPU per process: LOCAL_RANK picks it (trainer.device=auto/cuda); CPUs are shared."""
    if d.enabled and device.type == "cuda":
        if device.index not in (None, d.local_rank):
            raise ConfigError(f"trainer.device={device} under torchrun: each process takes the GPU of its "
                              "LOCAL_RANK; use trainer.device=auto or cuda")
        return torch.device("cuda", d.local_rank)
    return device


def prepare(model: nn.Module, t: DictConfig, d: Dist, device: torch.device) -> nn.Module:
    """SyncBatchNorm before the optimizer sees the parameters (the conversion makes new modules)."""
    if not t.get("sync_batchnorm"):
        return model
    if device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs "
                          "only); on CPUs leave it off, or use a model without BatchNorm")
    if not d.enabled:
        log.info("trainer.sync_batchnorm: one process, so BatchNorm has nothing to synchronise; left as it is")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, t: DictConfig, d: Dist, device: torch.device) -> nn.Module:
    """The module the training steps run: DDP over the plain model (whose state_dict checkpoints keep),
    compiled after wrapping when trainer.compile is on, which is how torch.compile's DDPOptimizer
    splits the graph at the gradient buckets. gradient_as_bucket_view: gradients are views into the
    all-reduce buckets, one copy and its memory fewer per step."""
    step_model = model
    if d.enabled and getattr(model, "unfreeze_after", None) is not None:
        raise ConfigError("model.unfreeze_after under torchrun: DDP fixes the trained parameters when it wraps the "
                          "model, so an encoder unfrozen later would train without its gradients synchronised; "
                          "train on one process, or with model.freeze_encoder=false from the start")
    if d.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True, static_graph=bool(t.get("ddp_static_graph", False)))
    return torch.compile(step_model, backend=t.compile_backend) if t.compile else step_model


def seed_rank(seed: int, d: Dist) -> None:
    """After the model is built from the common seed (DDP also broadcasts rank 0's weights): each rank
    its own augmentation stream; rank 0 keeps the one a single process would have."""
    if d.rank > 0:
        seed_everything(seed + d.rank)


def rank_fields() -> dict[str, Any]:
    """What a checkpoint adds for an exact resume of several processes: every rank's random streams
    (collective: every rank calls it, rank 0 writes the file)."""
    d = distributed.current()
    if not d.enabled:
        return {}
    return {"world_size": d.world, "rank_rng": distributed.gather(rng_state())}


def restore_rng(ckpt: dict[str, Any], path: Path) -> None:
    """Each rank's own streams when the checkpoint was written by as many processes as now; another
    count resumes, but not exactly (the samples each rank sees, and its augmentation, differ)."""
    d = distributed.current()
    saved_world = ckpt.get("world_size", 1)
    streams = ckpt.get("rank_rng")
    if saved_world == d.world and d.enabled:
        if not isinstance(streams, list) or len(streams) != d.world or not all(isinstance(s, dict) for s in streams):
            raise CheckpointError(f"{path}: its per-process random state is damaged (expected {d.world} entries); "
                                  "resume from a checkpoint seg-train wrote")
        set_rng_state(streams[d.rank])
        return
    set_rng_state(ckpt["rng"])  # rank 0's (a one-process run's own)
    if saved_world != d.world:
        if d.main:
            log.warning("resume: %s was written by %s process(es), this run has %d: training goes on, but not "
                        "exactly as it would have (each process now sees other samples)", path.name, saved_world,
                        d.world)
        if d.rank > 0:
            seed_everything(int(torch.initial_seed()) + d.rank)


def agreed(stop: GracefulStop, device: torch.device) -> Callable[[], bool]:
    """`stop()` for the step loop: alone, the signal this process received; data-parallel, a signal any
    process received, so all stop after the same step (one small all-reduce per step) and rank 0
    names the signal in its log and exit code."""
    if not distributed.current().enabled:
        return stop

    def check() -> bool:
        mine = signal.Signals[stop.requested].value if stop.requested else 0
        seen = distributed.max_int(mine, device)
        if seen and stop.requested is None:
            stop.requested = signal.Signals(seen).name
        return seen > 0

    return check


def mean_across(value: float, device: torch.device) -> float:
    """An epoch's training loss averaged over the processes (each saw its own shard)."""
    if not distributed.current().enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    distributed.sum_([t])
    return float(t.item()) / distributed.current().world
