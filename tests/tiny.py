"""Tiny training configs: small synthetic data and small models so a fit takes about a second."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from seg.cli.common import config_dir

TINY = [
    "dataset.n_images=20",
    "dataset.image_size=32",
    "trainer.epochs=2",
    "trainer.batch_size=4",
    "trainer.preview_images=2",
    "trainer.progress_every=1",
]
SMALL_UNET = ["model=unet", "model.depth=2", "model.wf=3"]


def compose_cfg(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """TINY settings, a small U-Net unless the overrides pick another model, then the overrides."""
    model = [] if any(o.startswith("model=") for o in overrides) else SMALL_UNET
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=[*TINY, *model, *overrides])
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return cfg
