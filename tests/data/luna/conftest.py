"""Fixtures for the LUNA16 tests: a synthetic release in the official layout (see luna_fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from luna_fixtures import Series, write_release


@pytest.fixture
def luna_root(tmp_path: Path) -> tuple[Path, list[Series]]:
    """A fresh release per test (tests may damage it)."""
    root = tmp_path / "luna16"
    return root, write_release(root)


@pytest.fixture(scope="session")
def shared_luna(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Series]]:
    """One release for the read-only tests."""
    root = tmp_path_factory.mktemp("luna16-shared")
    return root, write_release(root)
