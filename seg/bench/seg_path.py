"""The `seg` side of the benchmark, built from the engine's own pieces in the order `fit` uses them:
the same loader, `train_step` and metric accumulation, plus the progress bar's periodic read-back that
`train_one_epoch` does. Given a process group (`dist`, seg-bench --nproc), also what a data-parallel
seg-train adds: SyncBatchNorm, the DDP wrapper, this rank's shard and seed, the agreed stop check."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig

from seg.bench.measure import StepTimes, count_train_flops, cycle, sync, time_steps
from seg.data.base import SegDataModule
from seg.distributed import Dist
from seg.engine import builders
from seg.engine.loop import StepSettings, evaluate, to_device, train_step
from seg.engine.seeding import seed_everything
from seg.metrics import SegMetrics, per_image_stats
from seg.train import parallel
from seg.train.signals import GracefulStop


class SegRun:
    """Model, loss, augmentation, optimizer and loaders of a seg-train run, ready to time."""

    def __init__(self, cfg: DictConfig, data: SegDataModule, device: torch.device, *, dist: Dist | None = None) -> None:
        t = cfg.trainer
        self.cfg, self.t, self.data, self.device = cfg, t, data, device
        self.dist = dist or Dist()
        builders.set_determinism(bool(t.deterministic), bool(t.cudnn_benchmark), device)
        self.amp = builders.build_amp(str(t.precision), device)
        self.channels_last = builders.resolve_channels_last(t.channels_last, self.amp)
        self.settings = StepSettings(device, self.amp, self.channels_last, t.grad_clip_norm, t.grad_clip_value)
        seed_everything(cfg.seed)
        self.model = builders.build_model(cfg.model, t.weight_init).to(device)
        if dist is not None:  # as seg/train/run.py: SyncBatchNorm before the optimizer sees the parameters
            self.model = parallel.prepare(self.model, t, dist, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = builders.build_module(cfg.loss, "loss").to(device)
        self.augment = builders.build_module(cfg.augmentation, "augmentation").to(device)
        self.optimizer = builders.build_optimizer(cfg.optimizer, self.model, device)
        self.metrics = SegMetrics(n_classes=data.n_classes, class_names=data.class_names)
        self.step_model = parallel.wrap(self.model, t, self.dist, device)  # one process: compiled or as it is
        self.train_ds = data.dataset("train")
        self._stop: Callable[[], bool] | None = None
        if dist is not None:
            parallel.check_shards(len(self.train_ds), t)  # as seg-train: every process needs training samples
            # seg-train's step loop asks the processes, every progress_every steps, whether any got a stop signal
            self._stop = parallel.agreed(GracefulStop(), device, every=t.progress_every)
            parallel.seed_rank(cfg.seed, dist)
        self._total = torch.zeros((), device=device, dtype=torch.float64)
        self._steps = 0
        self._batches: Iterator[dict[str, Any]] | None = None

    def batches(self) -> Iterator[dict[str, Any]]:
        """Batches across epochs from one loader built as fit builds it (persistent workers)."""
        t = self.t
        loader = builders.build_loader(
            self.train_ds, batch_size=t.batch_size, num_workers=t.num_workers, device=self.device,
            shuffle_seed=self.cfg.seed, drop_last=True, pin_memory=t.pin_memory, prefetch_factor=t.prefetch_factor,
            rank=self.dist.rank, world=self.dist.world,
        )  # fmt: skip

        def epoch_loader(epoch: int) -> Any:
            loader.sampler.set_epoch(epoch)
            return loader

        return cycle(epoch_loader)

    def train_step(self, batch: dict[str, Any]) -> int:
        """The engine's own training step; returns the batch's image count."""
        loss, n = train_step(self.step_model, batch, self.loss_fn, self.optimizer, self.settings,
                             augment=self.augment, metrics=self.metrics)
        self._total += loss
        self._steps += 1
        if self.t.progress_every > 0 and self._steps % self.t.progress_every == 0:
            (self._total / self._steps).item()  # the progress bar's read-back
        return n

    def start(self) -> None:
        self.model.train()
        self.augment.train()
        self.metrics.reset()
        self._batches = self.batches()

    def step(self) -> int:
        if self._stop is not None:
            self._stop()
        return self.train_step(next(self._batches))

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()  # shuts the epoch's loader workers down now, not at garbage collection
            self._batches = None

    def time_pipeline(self, warmup: int, steps: int, sync_every: int = 1) -> StepTimes:
        """Loader + host-to-device copy + augmentation: what the data side can deliver alone."""
        self.augment.train()
        batches = self.batches()

        def step() -> int:
            image, mask, weight = to_device(next(batches), self.device, self.channels_last)
            image, _, _ = self.augment(image, mask, weight)
            return int(image.shape[0])

        try:
            return time_steps(step, warmup=warmup, steps=steps, device=self.device, sync_every=sync_every)
        finally:
            batches.close()

    def flops_per_image(self) -> float:
        batches = self.batches()
        try:
            image, mask, _ = to_device(next(batches), self.device, self.channels_last)
        finally:
            batches.close()
        flops = count_train_flops(self.model, image, mask, self.loss_fn, self.amp.autocast())
        return flops / image.shape[0]

    def eval_split(self) -> str:
        return "val" if len(self.data.dataset("val")) > 0 else "test"

    def time_eval(self) -> dict[str, Any]:
        """evaluate() as seg-eval calls it (the training's layout and precision, per-image statistics
        read back per batch), without writing reports. Two passes over one loader: the first, as a
        seg-eval run pays it, includes starting the loader's workers and cuDNN autotuning every batch
        shape; the second is the steady rate, the headline figure for splits larger than this one."""
        split = self.eval_split()
        dataset = self.data.dataset(split)
        metrics = SegMetrics(n_classes=self.data.n_classes, class_names=self.data.class_names)
        rows: list[float] = []

        def collect(batch: dict[str, Any], logits: torch.Tensor, mask: torch.Tensor) -> None:
            rows.extend(per_image_stats(logits, mask)["dice"].cpu().tolist())

        loader = builders.build_loader(dataset, batch_size=self.t.batch_size, num_workers=self.t.num_workers,
                                       device=self.device)
        settings = StepSettings(self.device, self.amp, self.channels_last)
        seconds: list[float] = []
        for _ in range(2):
            rows.clear()
            sync(self.device)
            tick = time.perf_counter()
            values = evaluate(self.model, loader, self.loss_fn, metrics, settings, on_batch=collect)
            sync(self.device)
            seconds.append(time.perf_counter() - tick)
        del loader  # persistent workers end with the loader
        first, steady = seconds
        return {"split": split, "images": len(rows), "seconds": steady,
                "images_per_second": len(rows) / steady if steady > 0 else 0.0,
                "first_pass_seconds": first, "first_pass_images_per_second": len(rows) / first if first > 0 else 0.0,
                "dice": values.get("dice")}
