"""Fixed preview images: the same few items every validation, so TensorBoard shows progress; seg-eval
writes its overlay files through the same render."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from seg.data.io import safe_name
from seg.engine.loop import StepSettings, to_device
from seg.logger.overlay import add_legend, legend_entries, legend_strip, overlay_panels
from seg.metrics import prediction

PREVIEW_MIN_SIDE = 256  # small inputs (32 px crops) are unreadable at native size in a viewer


def dataset_class_names(dataset: Dataset) -> list[str] | None:
    """class_names of the dataset or of what it wraps (a Subset's .dataset), when one carries them."""
    while dataset is not None:
        names = getattr(dataset, "class_names", None)
        if names is not None:
            return [str(n) for n in names]
        dataset = getattr(dataset, "dataset", None)
    return None


class Preview:
    """Panels of a fixed batch: upscaled to min_side on the short side (0: native size) and, with
    legend, a strip below naming the colours. The strip is drawn once per width and reused, so each
    validation only pays for the forward pass and the blending."""

    def __init__(
        self,
        dataset: Dataset,
        indices: list[int],
        n_classes: int,
        threshold: float = 0.5,
        class_names: Sequence[str] | None = None,
        min_side: int = PREVIEW_MIN_SIDE,
        legend: bool = True,
    ) -> None:
        self.indices = indices
        self.names = [safe_name(str(getattr(dataset, "ids", indices)[i])) for i in indices]
        # Random-crop datasets (LUNA training) would show a new crop each time: take them once.
        self.batch = default_collate([dataset[i] for i in indices]) if indices else None
        self.n_classes = n_classes
        self.threshold = threshold
        self.class_names = list(class_names) if class_names is not None else dataset_class_names(dataset)
        self.min_side = min_side
        self.legend = legend
        self._strips: dict[int, torch.Tensor] = {}

    def legend_strip(self, width: int) -> torch.Tensor:
        if width not in self._strips:
            self._strips[width] = legend_strip(legend_entries(self.n_classes, self.class_names), width)
        return self._strips[width]

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
        pred = prediction(logits.float(), self.threshold)
        panels = overlay_panels(image, pred, mask, self.n_classes, min_side=self.min_side).cpu()
        return add_legend(panels, self.legend_strip(panels.shape[-1])) if self.legend else panels
