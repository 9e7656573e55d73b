"""One epoch of training and one evaluation pass: plain functions, as in torchvision's references.

Nothing here reads the loss back to the host per step: losses and confusion counts accumulate on the
device and are read once at the end (the progress bar syncs only every `progress_every` steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from seg.engine.amp import Amp
from seg.engine.state import EpochProgress
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


def _clip(model: nn.Module, norm: float | None, value: float | None) -> None:
    if value is not None:
        nn.utils.clip_grad_value_(model.parameters(), value)
    if norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), norm)


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
) -> tuple[torch.Tensor, int]:
    """One optimizer step on one batch. Returns the detached loss (still on the device: reading it
    would sync) and the number of images."""
    amp = settings.amp
    image, mask, weight = to_device(batch, settings.device, settings.channels_last)
    if augment is not None:
        image, mask, weight = augment(image, mask, weight)
    with amp.autocast():
        logits = model(image)
    loss = loss_fn(logits.float(), mask, weight=weight)
    optimizer.zero_grad(set_to_none=True)
    clipping = settings.clip_norm is not None or settings.clip_value is not None
    if amp.scaler is not None:
        amp.scaler.scale(loss).backward()
        if clipping:
            amp.scaler.unscale_(optimizer)
            _clip(model, settings.clip_norm, settings.clip_value)
        amp.scaler.step(optimizer)
        amp.scaler.update()
    else:
        loss.backward()
        if clipping:
            _clip(model, settings.clip_norm, settings.clip_value)
        optimizer.step()
    if metrics is not None:
        metrics.update(logits.detach(), mask)
    return loss.detach(), int(image.shape[0])


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
) -> EpochStats:
    """`start`: the part of this epoch trained before an interrupt (the loader already skips its
    samples); the returned loss is the mean over the whole epoch."""
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
    for batch in bar:
        if should_stop():  # checked before a step, so a stop after the last step lets the epoch finish
            interrupted = True
            break
        data_seconds += time.perf_counter() - tick
        if steps == 0:
            first_batch_seconds = data_seconds
        loss, n = train_step(model, batch, loss_fn, optimizer, settings, augment=augment, metrics=metrics)
        total += loss
        steps += 1
        samples += n
        if progress_every > 0 and steps % progress_every == 0:
            bar.set_postfix(loss=f"{(total / (start.steps + steps)).item():.4f}")
        tick = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
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
    return metrics.compute()
