"""Timing, memory and FLOP helpers for the benchmark.

A timed window of steps ends with a device sync, so its time is the work it launched, not just the
time to queue it. On a GPU a window spans several steps (`sync_every`): a sync after every step would
drain the queue each time and charge the loader's host work to the GPU, which a real run (no host
syncs in its step loop) overlaps. Throughput is the median over windows after warm-up, which shrugs
off the odd slow one (a worker restart at an epoch boundary, a page fault, another process on a
shared machine).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    """Wait for queued device work; CPU ops are already synchronous."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class StepTimes:
    """Wall seconds, images and steps of each timed window."""

    seconds: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.steps:
            self.steps = [1] * len(self.seconds)

    @property
    def median_seconds(self) -> float:
        """Median seconds per step."""
        return statistics.median(s / k for s, k in zip(self.seconds, self.steps)) if self.seconds else 0.0

    @property
    def median_images_per_second(self) -> float:
        rates = [n / s for n, s in zip(self.images, self.seconds) if s > 0]
        return statistics.median(rates) if rates else 0.0

    @property
    def mean_images_per_second(self) -> float:
        total = sum(self.seconds)
        return sum(self.images) / total if total > 0 else 0.0

    def extend(self, other: StepTimes) -> None:
        self.seconds.extend(other.seconds)
        self.images.extend(other.images)
        self.steps.extend(other.steps)

    def summary(self) -> dict[str, float]:
        per_step = [s / k for s, k in zip(self.seconds, self.steps)]
        return {
            "images_per_second": self.median_images_per_second,
            "images_per_second_mean": self.mean_images_per_second,
            "step_seconds_median": self.median_seconds,
            "step_seconds_min": min(per_step, default=0.0),
            "step_seconds_max": max(per_step, default=0.0),
            "timed_steps": sum(self.steps),
            "timed_windows": len(self.seconds),
            "timed_images": sum(self.images),
        }


def time_steps(
    step: Callable[[], int], *, warmup: int, steps: int, device: torch.device, sync_every: int = 1
) -> StepTimes:
    """Run `warmup` untimed then `steps` timed calls of `step` (which returns the images it used), in
    windows of `sync_every` steps that each end with a device sync."""
    if steps < 1 or warmup < 0 or sync_every < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and sync_every >= 1, got {steps}, {warmup}, {sync_every}")
    for _ in range(warmup):
        step()
    sync(device)
    times = StepTimes()
    done = 0
    while done < steps:
        k = min(sync_every, steps - done)
        start = time.perf_counter()
        n = sum(int(step()) for _ in range(k))
        sync(device)
        times.seconds.append(time.perf_counter() - start)
        times.images.append(n)
        times.steps.append(k)
        done += k
    return times


def split_steps(steps: int, rounds: int) -> list[int]:
    """`steps` as `rounds` near-equal chunks (fewer when steps < rounds), larger chunks first."""
    n = max(1, min(int(rounds), int(steps)))
    return [steps // n + (1 if i < steps % n else 0) for i in range(n)]


class Steppable(Protocol):
    def start(self) -> None: ...

    def step(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class PathResult:
    run: Any
    times: StepTimes
    peak_memory_bytes: int
    memory_increase_bytes: int


def interleaved(
    factories: dict[str, Callable[[], Steppable]], *, warmup: int, steps: int, rounds: int, device: torch.device,
    sync_every: int = 1,
) -> dict[str, PathResult]:
    """Time several training paths in alternating chunks, so a change in background load (a shared
    machine) hits all of them alike instead of skewing their ratio. Each path is built, warmed up
    and run for its first chunk alone, with a fresh memory peak: its peak and its increase over the
    memory in use before it was built are its own."""
    chunks = split_steps(steps, rounds)
    results: dict[str, PathResult] = {}
    try:
        for name, make in factories.items():
            reset_peak_memory(device)
            base = current_memory_bytes(device)
            run = make()
            run.start()
            results[name] = PathResult(run, StepTimes(), 0, 0)
            results[name].times = time_steps(run.step, warmup=warmup, steps=chunks[0], device=device,
                                              sync_every=sync_every)
            peak = peak_memory_bytes(device)
            results[name].peak_memory_bytes, results[name].memory_increase_bytes = peak, max(0, peak - base)
        for chunk in chunks[1:]:
            for result in results.values():
                result.times.extend(time_steps(result.run.step, warmup=0, steps=chunk, device=device,
                                                sync_every=sync_every))
    finally:
        for result in results.values():
            result.run.close()
    return results


def cycle(make_loader: Callable[[int], Iterable[Any]]) -> Iterator[Any]:
    """Batches across as many epochs as needed; `make_loader(epoch)` builds each epoch's loader (so
    the shuffling order and worker start-up are those of a real run)."""
    epoch = 1
    while True:
        empty = True
        for batch in make_loader(epoch):
            empty = False
            yield batch
        if empty:
            raise ValueError("the data loader yields no batches (is the split smaller than the batch size?)")
        epoch += 1


def reset_peak_memory(device: torch.device) -> bool:
    """Start a fresh peak; False where only the process-lifetime peak can be read."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(field: str) -> int | None:
    """A `Vm...:` field (VmHWM, VmRSS) of /proc/self/status in bytes (Linux), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max bytes allocated by tensors; CPU: this process's peak resident set (loader workers,
    which are other processes, are not included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def current_memory_bytes(device: torch.device) -> int:
    """CUDA: bytes allocated by tensors now; CPU: this process's resident set now."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status_bytes("VmRSS") or 0


def memory_kind(device: torch.device) -> str:
    return "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"


def count_train_flops(
    model: nn.Module, image: torch.Tensor, mask: torch.Tensor, loss_fn: nn.Module, autocast: Any
) -> int:
    """FLOPs of one forward + backward on `image` (matmuls and convolutions, 2 per multiply-add).
    Gradients it leaves are cleared; run it on the eager model, not a compiled one."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        with autocast:
            logits = model(image)
        loss_fn(logits.float(), mask).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def machine_info(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
