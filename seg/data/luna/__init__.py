"""LUNA16 lung-nodule CT: slices with context channels, from a prepared memory-mapped cache.

`Luna16Data` is imported on first use so `seg-prepare` (which needs no torch) starts quickly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Luna16Data"]


def __getattr__(name: str) -> Any:
    if name == "Luna16Data":
        from seg.data.luna.dataset import Luna16Data

        return Luna16Data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
