"""A file holding pickled Python objects is refused in one line that never passes on torch's advice to
load it unsafely (weights_only=False, allowlisting its globals), and nothing in it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from seg.checkpoint import EXPECTED, load_checkpoint
from seg.errors import CheckpointError

ADVICE = ("weights_only", "trust", "safe_globals(", "arbitrary code", "\x1b[")


class Custom:
    """An object of a class of its own, as a careless torch.save(model) would store."""


class Runs:
    """Unpickled, this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["custom", "runs", "builtin"])
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pickled_objects_are_refused_without_unsafe_advice(tmp_path: Path, payload: str, zipped: bool) -> None:
    marker = tmp_path / "marker"
    value = {"custom": Custom(), "runs": Runs(marker), "builtin": print}[payload]
    path = tmp_path / "model.pt"
    torch.save({"model": {}, "config": {}, "epoch": 1, "x": value}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "it holds Python objects that a safe load refuses: " in message and "\n" not in message
    assert not any(advice in message.lower() for advice in ADVICE), message
    assert message.endswith(f"; {EXPECTED}")
    assert not marker.exists()
