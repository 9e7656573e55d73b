"""Shared test settings: CPU only, small thread pools, caches in a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.tiny import compose_cfg

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.cache/seg."""
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "seg-cache"))


@pytest.fixture
def shared_data() -> Path:
    """Real sample files beside the checkout (never committed); tests using them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture
def tiny_cfg() -> Callable[..., DictConfig]:
    """compose_cfg: the TINY training settings plus a test's overrides (tests/tiny.py)."""
    return compose_cfg
