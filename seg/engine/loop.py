"""One epoch of training and one evaluation pass: plain functions, as in torchvision's references.

Nothing here reads the loss back to the host per step: losses, confusion counts and the non-finite
watch accumulate on the device and are read once at the end (the progress bar syncs only every
`progress_every` steps, and the watch is read there too).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from seg import distributed
from seg.engine.amp import Amp
from seg.engine.ema import ModelEma
from seg.engine.state import EpochProgress
from seg.errors import TrainingDiverged
from seg.metrics import SegMetrics

Batch = dict[str, Any]


@dataclass
class EpochStats:
    loss: float
    steps: int
    samples: int
    seconds: float
    data_seconds: float
    interrupted: bool = False
    progress: EpochProgress | None = None  # the whole epoch so far, resumed part included
    first_batch_seconds: float = 0.0  # part of data_seconds: starting workers, refilling their queues

    @property
    def data_wait_fraction(self) -> float:
        return self.data_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_data_wait_fraction(self) -> float:
        """The wait after the first batch: what more loader workers can remove. On short epochs the
        first batch, which every epoch waits for, dominates the whole fraction."""
        seconds = self.seconds - self.first_batch_seconds
        return (self.data_seconds - self.first_batch_seconds) / seconds if seconds > 0 else 0.0

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def to_device(
    batch: Batch, device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """uint8 images are sent as bytes (4x less to copy) and scaled to [0,1] on the device."""
    image = batch["image"].to(device, non_blocking=True)
    image = image.float().div_(255) if image.dtype == torch.uint8 else image.float()
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    mask = batch["mask"].to(device, non_blocking=True).long()
    weight = batch.get("weight")
    if weight is not None:
        weight = weight.to(device, non_blocking=True).float()
    return image, mask, weight


def _clip(model: nn.Module, norm: float | None, value: float | None) -> torch.Tensor | None:
    """Clip the gradients; returns their total norm (before clipping) where norm clipping computes it."""
    if value is not None:
        nn.utils.clip_grad_value_(model.parameters(), value)
    if norm is not None:
        return nn.utils.clip_grad_norm_(model.parameters(), norm)
    return None


NEVER = torch.iinfo(torch.int64).max  # "no bad step yet", the identity of the minimum kept below


class FiniteWatch:
    """The first step of an epoch whose loss, or gradient norm, was nan or inf, tracked on the device:
    `update` queues three small kernels per step and never waits for the GPU, and `check` reads the
    result where the loop syncs anyway (the progress bar, the end of the epoch). Without it a diverged
    run trains on NaN weights to the end and saves them (a lr of 1e30 did, exiting 0).

    With fp16's GradScaler an inf/nan gradient is routine: the scaler skips that step and lowers its
    scale, the weights stay as they were. So under a scaler only the loss counts, which the scaler
    does not repair; the weights themselves are checked before every save (`nonfinite_weights`)."""

    def __init__(self, device: torch.device, epoch: int, step: int = 0) -> None:
        self.epoch, self.step = epoch, step  # step: those done before this one (a resumed epoch's count)
        self._loss = torch.full((), NEVER, dtype=torch.int64, device=device)
        self._grad = torch.full((), NEVER, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, scaled: bool = False) -> None:
        self.step += 1
        self._loss = torch.minimum(self._loss, torch.where(torch.isfinite(loss), NEVER, self.step))
        if grad_norm is not None and not scaled:
            self._grad = torch.minimum(self._grad, torch.where(torch.isfinite(grad_norm), NEVER, self.step))

    def check(self) -> None:
        """Raise TrainingDiverged naming the first bad step, if there was one (one host read)."""
        first = torch.stack([self._loss, self._grad])
        distributed.min_([first])  # data-parallel: every rank stops at the same check, on any rank's bad step
        loss_step, grad_step = first.tolist()
        step = min(loss_step, grad_step)
        if step == NEVER:
            return
        what = "the loss" if loss_step <= grad_step else "the gradient norm"
        raise TrainingDiverged(f"training diverged: {what} was not finite (nan or inf) at epoch {self.epoch}, "
                               f"step {step}", epoch=self.epoch, step=step)


def nonfinite_weights(model: nn.Module) -> list[str]:
    """The state_dict entries (parameters and buffers such as batch-norm statistics) holding a nan or
    inf: a model that must never be saved. One host read for all of them."""
    tensors = {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).tolist()
    return [k for k, ok in zip(tensors, finite) if not ok]


@dataclass
class StepSettings:
    """How a training step runs; resolved once from the trainer config."""

    device: torch.device
    amp: Amp
    channels_last: bool = False
    clip_norm: float | None = None
    clip_value: float | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def train_step(
    model: nn.Module,
    batch: Batch,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    *,
    augment: nn.Module | None = None,
    metrics: SegMetrics | None = None,
    watch: FiniteWatch | None = None,
    ema: ModelEma | None = None,
    accumulate: int = 1,
    first: bool = True,
    last: bool = True,
) -> tuple[torch.Tensor, int]:
    """One batch: forward, backward and, on the `last` batch of an accumulation group, the optimizer
    step. Returns the detached loss (still on the device: reading it would sync) and the number of
    images. With `accumulate` = K the loss is divided by K, so K batches' gradients add up to those of
    one K times larger batch; `first` clears the gradients. Under DDP the batches before the last skip
    the gradient all-reduce (no_sync): only the summed gradients cross the network. `watch` notes a
    non-finite loss or gradient norm; `ema` averages the weights after the step (also after a step
    fp16's scaler skipped: it then moves the average towards unchanged weights, as timm's does)."""
    amp = settings.amp
    image, mask, weight = to_device(batch, settings.device, settings.channels_last)
    if augment is not None:
        image, mask, weight = augment(image, mask, weight)
    if first:
        optimizer.zero_grad(set_to_none=True)
    no_sync = getattr(model, "no_sync", None) if not last else None
    with no_sync() if no_sync is not None else contextlib.nullcontext():
        with amp.autocast():
            logits = model(image)
        loss = loss_fn(logits.float(), mask, weight=weight)
        scaled = loss / accumulate if accumulate > 1 else loss
        (amp.scaler.scale(scaled) if amp.scaler is not None else scaled).backward()
    grad_norm = _optimizer_step(model, optimizer, settings, ema) if last else None
    if watch is not None:
        watch.update(loss.detach(), grad_norm, scaled=amp.scaler is not None)
    if metrics is not None:
        metrics.update(logits.detach(), mask)
    return loss.detach(), int(image.shape[0])


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, settings: StepSettings,
                    ema: ModelEma | None) -> torch.Tensor | None:
    """Clip (unscaled first under fp16's scaler), step, update the EMA; the gradient norm when clipping
    by norm computed it."""
    amp = settings.amp
    clipping = settings.clip_norm is not None or settings.clip_value is not None
    grad_norm = None
    if amp.scaler is not None:
        if clipping:
            amp.scaler.unscale_(optimizer)
            grad_norm = _clip(model, settings.clip_norm, settings.clip_value)
        amp.scaler.step(optimizer)
        amp.scaler.update()
    else:
        if clipping:
            grad_norm = _clip(model, settings.clip_norm, settings.clip_value)
        optimizer.step()
    if ema is not None:
        ema.update()
    return grad_norm


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    *,
    augment: nn.Module | None = None,
    metrics: SegMetrics | None = None,
    progress_every: int = 10,
    desc: str = "train",
    should_stop: Callable[[], bool] = lambda: False,
    start: EpochProgress | None = None,
    ema: ModelEma | None = None,
    accumulate: int = 1,
    processes: int = 1,
) -> EpochStats:
    """`start`: the part of this epoch trained before an interrupt (the loader already skips its
    samples); the returned loss is the mean over the whole epoch. A non-finite loss or gradient raises
    TrainingDiverged at the next progress read or at the end of the epoch, before anything is saved.
    `ema` (trainer.ema_decay) averages the weights after every optimizer step, on the device.
    `accumulate`: batches per optimizer step; a stop is taken only between steps, so a resume never
    meets half-summed gradients. `processes`: data-parallel processes, each a shard of the epoch:
    samples (what a resume skips, the img/s) count them all."""
    start = start or EpochProgress(epoch=0)
    model.train()
    if augment is not None:
        augment.train()
    device = settings.device
    total = torch.full((), start.loss_sum, device=device, dtype=torch.float64)  # summed as if never stopped
    steps = samples = 0
    data_seconds = first_batch_seconds = 0.0
    began = tick = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    interrupted = False
    watch = FiniteWatch(device, start.epoch, start.steps)
    try:
        batches = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        for batch in bar:
            first = (start.steps + steps) % accumulate == 0
            # checked before an optimizer step, so a stop after the last step lets the epoch finish
            if first and should_stop():
                interrupted = True
                break
            data_seconds += time.perf_counter() - tick
            if steps == 0:
                first_batch_seconds = data_seconds
            last = (start.steps + steps + 1) % accumulate == 0 or steps + 1 == batches
            loss, n = train_step(model, batch, loss_fn, optimizer, settings, augment=augment, metrics=metrics,
                                 watch=watch, ema=ema, accumulate=accumulate, first=first, last=last)
            total += loss
            steps += 1
            samples += n * processes
            if progress_every > 0 and steps % progress_every == 0:
                watch.check()  # the read below waits for the device anyway: this one adds no stall
                bar.set_postfix(loss=f"{(total / (start.steps + steps)).item():.4f}")
            tick = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        watch.check()
    finally:
        bar.close()
    seconds = time.perf_counter() - began
    progress = EpochProgress(start.epoch, start.steps + steps, start.samples + samples, total.item())
    mean = progress.loss_sum / max(progress.steps, 1)
    return EpochStats(mean, steps, samples, seconds, data_seconds, interrupted, progress, first_batch_seconds)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: nn.Module | None,
    metrics: SegMetrics,
    settings: StepSettings,
    *,
    desc: str = "val",
    on_batch: Callable[[Batch, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Metrics over the whole loader; `on_batch(batch, logits, mask)` lets seg-eval collect per-image
    numbers without a second pass."""
    model.eval()
    metrics.reset()
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        image, mask, weight = to_device(batch, settings.device, settings.channels_last)
        with settings.amp.autocast():
            logits = model(image)
        logits = logits.float()
        loss = loss_fn(logits, mask, weight=weight) if loss_fn is not None else None
        metrics.update(logits, mask, loss=loss)
        if on_batch is not None:
            on_batch(batch, logits, mask)
    metrics.sync(settings.device)  # data-parallel: each process scored its shard of the split
    return metrics.compute()
