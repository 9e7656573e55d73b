"""End-to-end recipe tests: compose the real configs in-process, then train and evaluate on tiny trees.

The dataset writers of the reader tests are reused; those modules live in folders without
__init__.py, so their folders go on sys.path here, before the test module imports them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from seg.cli.common import config_dir

DATA_TESTS = Path(__file__).resolve().parents[1] / "data"
for folder in (DATA_TESTS, DATA_TESTS / "luna"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def compose_eval(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="eval", overrides=overrides)


@pytest.fixture
def train_cfg() -> Callable[[list[str], Path], DictConfig]:
    """compose("train", overrides) with run_dir set, as `seg-train` would build it."""
    return compose_train


@pytest.fixture
def eval_cfg() -> Callable[[list[str]], DictConfig]:
    """compose("eval", overrides), as `seg-eval` would build it."""
    return compose_eval
