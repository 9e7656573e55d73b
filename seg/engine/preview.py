"""Fixed preview images: the same few items every validation, so TensorBoard shows progress."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from seg.data.io import safe_name
from seg.engine.loop import StepSettings, to_device
from seg.logger.overlay import overlay_panels
from seg.metrics import prediction


class Preview:
    def __init__(self, dataset: Dataset, indices: list[int], n_classes: int, threshold: float = 0.5) -> None:
        self.indices = indices
        self.names = [safe_name(str(getattr(dataset, "ids", indices)[i])) for i in indices]
        # Random-crop datasets (LUNA training) would show a new crop each time: take them once.
        self.batch = default_collate([dataset[i] for i in indices]) if indices else None
        self.n_classes = n_classes
        self.threshold = threshold

    @torch.no_grad()
    def render(self, model: nn.Module, settings: StepSettings) -> torch.Tensor | None:
        if self.batch is None:
            return None
        was_training = model.training
        model.eval()
        image, mask, _ = to_device(self.batch, settings.device, settings.channels_last)
        with settings.amp.autocast():
            logits = model(image)
        model.train(was_training)
        return overlay_panels(image, prediction(logits.float(), self.threshold), mask, self.n_classes).cpu()
