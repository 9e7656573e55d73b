"""Shared test settings: CPU only, small thread pools, caches in a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# One thread per process. The tests' tiny models gain nothing from a second one, and where cores are shared
# (other jobs, or the commands the tests start) OpenMP threads spin waiting for one another: on a busy
# 2-core machine tests/train/test_fit.py took 32 s with 2 threads and 10 s with 1, at a third of the CPU.
# Set before torch loads, so the commands the tests start inherit it too (a value already set is kept).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tests.tiny import compose_cfg  # noqa: E402

torch.set_num_threads(1)  # also where torch was loaded before this file

# Real sample files (never committed): SEG_SAMPLE_DATA names their folder, ../shared/data beside the checkout
# is the default. A clone elsewhere, a CI runner say, runs those tests by setting the variable.
SAMPLE_DATA_ENV = "SEG_SAMPLE_DATA"
SHARED_DATA = Path(os.environ.get(SAMPLE_DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.cache/seg."""
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "seg-cache"))


@pytest.fixture
def shared_data() -> Path:
    """The real sample files' folder (SHARED_DATA); tests using it skip when it is absent and not asked for."""
    if os.environ.get(SAMPLE_DATA_ENV):
        if not SHARED_DATA.is_dir():  # asked for by name: a wrong path fails rather than skipping unseen
            pytest.fail(f"{SAMPLE_DATA_ENV}={SHARED_DATA} is not a folder")
    elif not SHARED_DATA.is_dir():
        pytest.skip(f"no sample data in {SHARED_DATA}: set {SAMPLE_DATA_ENV}=/path/to/shared/data to run this test")
    return SHARED_DATA


@pytest.fixture
def tiny_cfg() -> Callable[..., DictConfig]:
    """compose_cfg: the TINY training settings plus a test's overrides (tests/tiny.py)."""
    return compose_cfg
