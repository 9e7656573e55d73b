"""The baseline: the same model, loss, optimizer and batch size trained the way the tutorials in
shared/reference/ train (fp32, NCHW, per-sample CPU transforms in the Dataset, a default DataLoader
with no workers, a host read-back of the loss every step).

Only the per-sample work is tutorial-style; images are decoded once up front at their native
resolution (file readers) or taken from the decoded arrays (generated or pre-cropped data), so file
decoding is not what the comparison measures. Of the configured augmentation the baseline does the
flips only (per sample, NumPy); heavier ops (affine, elastic, intensity) it leaves out, which favours
the baseline when they are on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from skimage.transform import resize
from torch.utils.data import DataLoader, Dataset

from seg.bench.measure import cycle
from seg.data.base import IGNORE_INDEX, CachedArrayData, SegDataModule
from seg.engine import builders
from seg.engine.seeding import seed_everything
from seg.metrics import SegMetrics


@dataclass
class Sample:
    image: np.ndarray  # HxWxC, uint8 or float32, native resolution
    mask: np.ndarray  # HxW class ids
    weight: np.ndarray | None = None  # HxW, already at the training size


def native_samples(data: SegDataModule, split: str, limit: int) -> list[Sample]:
    """Up to `limit` cases of `split` as decoded arrays: through the reader's `load_case` (native
    resolution) for file readers without weight maps, else the dataset's own items."""
    if isinstance(data, CachedArrayData) and data.root is not None and data.weight_fn() is None:
        out = []
        for case in data.split_ids()[split][:limit]:
            image, mask = data.load_case(case)
            out.append(Sample(image[..., None] if image.ndim == 2 else image, mask))
        return out
    dataset = data.dataset(split)
    out = []
    for i in range(min(limit, len(dataset))):
        item = dataset[i]
        weight = item.get("weight")
        out.append(Sample(np.moveaxis(item["image"].numpy(), 0, -1), item["mask"].numpy(),
                          None if weight is None else weight.numpy()))
    return out


class TutorialDataset(Dataset):
    """Per sample, on the CPU: float conversion, skimage resize, random flips; (image, mask[, weight])
    tuples as the tutorials return them."""

    def __init__(self, *, samples: list[Sample], size: tuple[int, int], hflip_p: float, vflip_p: float) -> None:
        self.samples, self.size = samples, tuple(size)
        self.hflip_p, self.vflip_p = float(hflip_p), float(vflip_p)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        s = self.samples[index]
        image = s.image.astype(np.float32) / 255.0 if s.image.dtype == np.uint8 else s.image.astype(np.float32)
        image = resize(image, self.size, mode="constant", anti_aliasing=True).astype(np.float32)
        if (s.mask == IGNORE_INDEX).any() or s.mask.max() > 1:  # class maps: nearest, no new ids
            mask = resize(s.mask, self.size, order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
        else:  # binary: threshold a smooth resize, as the PH2 notebook does
            mask = (resize(s.mask.astype(np.float32), self.size, mode="constant", anti_aliasing=False) > 0.5)
            mask = mask.astype(np.int64)
        weight = s.weight
        if np.random.rand() < self.hflip_p:
            image, mask = image[:, ::-1], mask[:, ::-1]
            weight = None if weight is None else weight[:, ::-1]
        if np.random.rand() < self.vflip_p:
            image, mask = image[::-1], mask[::-1]
            weight = None if weight is None else weight[::-1]
        out = (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
               torch.from_numpy(np.ascontiguousarray(mask)))
        if weight is not None:
            out += (torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)),)
        return out


def flip_probabilities(augmentation: DictConfig) -> tuple[float, float]:
    return float(augmentation.get("hflip_p", 0.0) or 0.0), float(augmentation.get("vflip_p", 0.0) or 0.0)


class ReferenceRun:
    """The tutorial loop over the same config; fresh model with the same seed as the seg run."""

    def __init__(self, cfg: DictConfig, data: SegDataModule, device: torch.device, n_samples: int) -> None:
        self.device, self.batch_size = device, int(cfg.trainer.batch_size)
        train = data.dataset("train")
        size = tuple(train[0]["image"].shape[-2:])
        hflip_p, vflip_p = flip_probabilities(cfg.augmentation)
        samples = native_samples(data, "train", max(n_samples, self.batch_size))
        self.dataset = TutorialDataset(samples=samples, size=size, hflip_p=hflip_p, vflip_p=vflip_p)
        seed_everything(cfg.seed)
        self.model = builders.build_model(cfg.model, cfg.trainer.weight_init).to(device)
        self.loss_fn = builders.build_module(cfg.loss, "loss").to(device)
        self.optimizer = builders.build(cfg.optimizer, "optimizer")(self.model.parameters())
        self.losses: list[float] = []
        self._batches: Iterator[Any] | None = None

    def loader(self, epoch: int) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> int:
        images, masks = batch[0].to(self.device), batch[1].to(self.device)
        weight = batch[2].to(self.device) if len(batch) > 2 else None
        preds = self.model(images)
        loss = self.loss_fn(preds, masks, weight=weight)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        return int(images.shape[0])

    def train_epoch(self) -> int:
        """One pass over the training samples, as a tutorial's `for images, masks in loader:`."""
        self.model.train()
        return sum(self.train_step(batch) for batch in self.loader(0))

    @torch.no_grad()
    def validate(self, dataset: Dataset, metrics: SegMetrics) -> dict[str, float]:
        """`model.eval()` and a plain loop over `dataset` in batches, fp32 NCHW. The items are seg's own
        val split (the tensors seg-train scores) and the counting is seg's SegMetrics, so a target means
        the same thing for both loops."""
        self.model.eval()
        metrics.reset()
        for batch in DataLoader(dataset, batch_size=self.batch_size):
            image = batch["image"].to(self.device)
            image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
            mask = batch["mask"].to(self.device).long()
            weight = batch["weight"].to(self.device) if "weight" in batch else None
            logits = self.model(image)
            metrics.update(logits, mask, loss=self.loss_fn(logits, mask, weight=weight))
        return metrics.compute()

    def start(self) -> None:
        self.model.train()
        self._batches = cycle(self.loader)

    def step(self) -> int:
        return self.train_step(next(self._batches))

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None
