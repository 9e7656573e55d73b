"""TensorBoard writer for a run: scalars per epoch and fixed-image overlays at each validation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter


class TensorBoardLogger:
    """One event folder `<run>/tb/`; a resumed run purges steps after its checkpoint and goes on in it,
    so the curves continue instead of forking."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), global_step=step)

    def panels(self, tag: str, panels: torch.Tensor, step: int, names: list[str]) -> None:
        """One image per fixed sample, each under its own tag, so TensorBoard's step slider shows how the
        same image's prediction evolves."""
        for panel, name in zip(panels, names):
            self.writer.add_image(f"{tag}/{name}", panel.clamp(0, 1).cpu(), global_step=step, dataformats="CHW")

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """One HPARAMS entry in this run's own event file (SummaryWriter.add_hparams would start a new
        run folder per call); the metrics are logged as scalars under the same tags, which is where the
        HPARAMS tab reads their values."""
        from torch.utils.tensorboard.summary import hparams

        experiment, start, end = hparams(dict(params), dict(metrics))
        for summary in (experiment, start, end):
            self.writer._get_file_writer().add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
