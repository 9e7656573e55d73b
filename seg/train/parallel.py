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
from seg.overrides import shell_arg
from seg.train.signals import GracefulStop

log = logging.getLogger("seg")


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """One GPU per process: LOCAL_RANK picks it (trainer.device=auto/cuda); CPUs are shared."""
    if d.enabled and device.type == "cuda":
        if device.index is not None:  # refused on every rank alike, so none waits for the others
            raise ConfigError(f"trainer.device={device} under torchrun: each process takes the GPU of its "
                              "LOCAL_RANK; use trainer.device=auto or cuda")
        return torch.device("cuda", d.local_rank % max(1, torch.cuda.device_count()))
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


def agreed(stop: GracefulStop, device: torch.device, every: int = 1) -> Callable[[], bool]:
    """`stop()` for the step loop: alone, the signal this process received; data-parallel, a signal any
    process received, so all stop after the same step and rank 0 names the signal in its log and exit
    code. The processes compare notes on every `every`-th call only (trainer.progress_every, where the
    loop reads the device anyway): each comparison is an all-reduce and a host read, which on a GPU
    would stop the host from queueing the next step while this one runs."""
    if not distributed.current().enabled:
        return stop
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        if calls % max(1, every):
            return False
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


class SharedTrial:
    """A data-parallel search job's Optuna trial: rank 0 alone reports to the study (one writer), and
    every rank learns its verdict, so all stop after the same validation when it is pruned."""

    def __init__(self, trial: Any) -> None:
        self.trial, self.pruned = trial, False

    def report(self, epoch: int, value: float) -> bool:
        verdict = self.trial.report(epoch, value) if self.trial is not None else False
        self.pruned = bool(distributed.broadcast(verdict))
        return self.pruned


def search_trial(cfg: DictConfig, mode: str, build: Callable[[DictConfig, str], Any]) -> Any:
    """The trial a run reports to (seg.search.report.trial_reporter builds it), shared by the ranks."""
    if not distributed.current().enabled:
        return build(cfg, mode)
    search = cfg.get("search")
    if not isinstance(search, DictConfig) or search.get("trial") is None:
        return None
    return SharedTrial(build(cfg, mode) if distributed.current().main else None)


def sync_buffers(*modules: nn.Module | None) -> None:
    """Rank 0's BatchNorm statistics on every rank before validation: DDP broadcasts them before each
    training forward, but each rank's last step then updates its own, so without this the ranks
    would score different models (and not the one rank 0 saves)."""
    if not distributed.current().enabled:
        return
    for module in modules:
        if module is not None:
            distributed.broadcast_tensors([b for b in module.buffers() if b.is_floating_point()])


def check_shards(n_train: int, t: DictConfig) -> None:
    """Every process needs training samples: a split smaller than the processes would train nothing."""
    world = distributed.current().world
    if n_train < world:
        raise ConfigError(f"the training split has {n_train} item(s) for {world} processes; each process needs at "
                          "least one (start fewer processes, or use more data)")
    if n_train < world * t.batch_size:
        log.warning("the training split (%d items) is smaller than one step of %d processes x trainer.batch_size=%d:"
                    " each process trains on %d item(s) an epoch", n_train, world, t.batch_size, n_train // world)


def resume_command(last: Path) -> str:
    """The command that continues a stopped run exactly: a sweep job's is its sweep's; under torchrun,
    with as many processes. Quoted so that it runs as printed (job folders hold `=` and `,`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = shell_arg("hydra.sweep.dir", str(HydraConfig.get().sweep.dir))
        return f"the sweep's own command plus {sweep} resume=auto"
    resume, d = shell_arg("resume", str(last)), distributed.current()
    if d.enabled:
        return f"torchrun --nproc_per_node={d.world} -m seg.cli.train {resume} (as many processes as now)"
    return f"seg-train {resume}"

