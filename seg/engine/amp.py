"""Mixed precision: which autocast dtype, and a grad scaler only where fp16 needs one."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from seg.errors import ConfigError


@dataclass
class Amp:
    precision: str
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(cls, precision: str, device: torch.device) -> Amp:
        if precision == "32":
            return cls(precision, device.type, None, None)
        if precision == "bf16":
            if device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ConfigError("trainer.precision=bf16 but this GPU has no bf16 support: use 16 or 32")
            return cls(precision, device.type, torch.bfloat16, None)
        if precision == "16":
            return cls(precision, device.type, torch.float16, torch.amp.GradScaler(device.type))
        raise ConfigError(f"unknown precision {precision!r}")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)
