"""Data-parallel runs on PyTorch's own engine: torchrun (or SLURM through submitit) starts the
processes and sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; this module only reads that, joins the
process group, and offers the few collectives seg needs. One process (no such variables) is the
ordinary run: every function here is then a no-op, so nothing else needs to ask which it is.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from seg.errors import ConfigError

log = logging.getLogger("seg")

# A collective that waits this long means another process is gone or stuck: an error naming this
# rank beats a hang. Generous, since rank 0 alone writes checkpoints while the others wait.
TIMEOUT_S = float(os.environ.get("SEG_DIST_TIMEOUT_S", 600))


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, TensorBoard and the log."""
        return self.rank == 0


def env_dist() -> Dist:
    """The process's place in the job, from torchrun's variables (submitit's SLURM launcher sets the
    same through `adopt_submitit_env`). No variables: one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        rank = int(os.environ.get("RANK", 0))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world}: the rank must lie in [0, WORLD_SIZE)")
    return Dist(rank=rank, world=world, local_rank=local)


def adopt_submitit_env() -> None:
    """A SLURM job of several tasks started by Hydra's submitit launcher: give torch the rendezvous
    variables torchrun would have set, from SLURM's own (submitit's TorchDistributedEnvironment), so
    the tasks of one job find each other. Outside submitit, or with one task, nothing changes."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "WORLD_SIZE" in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # Each task sees the GPUs SLURM gave the job; LOCAL_RANK picks one (torch.cuda.set_device in join).
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def quiet_log_file() -> None:
    """A rank other than 0 stops writing the run's log file (Hydra opened it for every task of a SLURM
    job) and keeps its warnings and errors on the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)


def current() -> Dist:
    """The joined process group's view (one process when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Dist()


def join(device_kind: str) -> Dist:
    """Join the process group once (nccl for CUDA, gloo for CPU), as torchrun's env:// rendezvous
    describes it. Idempotent, so the run-folder callback can join early and fit() again."""
    d = env_dist()
    if not d.enabled or dist.is_initialized():
        return current() if d.enabled else d
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError(f"WORLD_SIZE={d.world} but MASTER_ADDR is not set: start the processes with torchrun "
                          "(torchrun --nproc_per_node=N -m seg.cli.train ...), which sets the rendezvous")
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":  # modulo: clusters that bind one GPU to each task show every task its "GPU 0"
        torch.cuda.set_device(d.local_rank % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return d


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_worker() -> bool:
    """One of several processes that torchrun started (a bad WORLD_SIZE is reported later, by join)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def run_entry(entry: Callable[[], None]) -> None:
    """A command's entry point; as a torchrun worker, it then ends through `exit_worker` with the
    status the entry gave (sys.exit's, or 0)."""
    if not is_worker():
        entry()
        return
    try:
        entry()
    except SystemExit as exc:  # user errors and signals end here, with their status
        exit_worker(exc.code)
    exit_worker(0)


def exit_worker(code: int | str | None) -> NoReturn:
    """End a data-parallel process without the interpreter's teardown. After DDP, gloo's worker threads
    outlive destroy_process_group (torch 2.13 keeps the group referenced from C++), and tearing them
    down with the interpreter aborted the process ("terminate called without an active exception")
    in about 1 of 40 two-process runs here, which torchrun reports as a failed run. Everything seg
    writes is closed by then; the logs and the console are flushed first."""
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def broadcast(value: Any, src: int = 0) -> Any:
    """Rank `src`'s Python value on every rank (a folder, a verdict): small objects only."""
    if not current().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank (RNG states for a checkpoint)."""
    d = current()
    if not d.enabled:
        return [value]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def max_int(value: int, device: torch.device) -> int:
    """The largest of the ranks' values, on every rank (a stop signal's number seen by one process)."""
    if not current().enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Rank `src`'s tensors, in place, on every rank (BatchNorm statistics)."""
    if not current().enabled:
        return
    for t in tensors:
        dist.broadcast(t, src=src)


def min_(tensors: list[torch.Tensor]) -> None:
    """The smallest across ranks, in place (the first bad step any rank saw)."""
    if not current().enabled:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)


def sum_(tensors: list[torch.Tensor]) -> None:
    """Sum in place across ranks (metric counts)."""
    if not current().enabled:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process stopped (its own error is on the
    console): gloo and NCCL report it as RuntimeError or torch's DistError."""
    if not current().enabled:
        return False
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out")))

