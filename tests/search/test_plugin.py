"""The sweeper reaches Hydra from an installed seg, not only from the checkout."""

from __future__ import annotations

from pathlib import Path

import tomllib

from tests.cli.test_cli import run

ROOT = Path(__file__).resolve().parents[2]


def test_the_sweeper_plugin_is_installed_with_seg(tmp_path: Path) -> None:
    # Hydra instantiates sweepers only from its hydra_plugins namespace (hydra_plugins/seg_optuna/ here), and
    # lists that namespace to find them, which an editable install hides: seg.config registers the class too.
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert {"seg.search", "hydra_plugins.seg_optuna"} <= listed, "add them to [tool.setuptools] packages"
    shown = run("seg-train", "hparams_search=unet_optuna", "--cfg", "hydra", "--package", "hydra.sweeper",
                cwd=tmp_path, fresh=True)  # a new interpreter outside the checkout: only what is installed
    assert shown.returncode == 0, shown.stderr
    assert "_target_: hydra_plugins.seg_optuna.optuna_sweeper.OptunaSweeper" in shown.stdout
    assert "optimizer.lr: tag(log, interval(1e-4, 1e-2))" in shown.stdout
