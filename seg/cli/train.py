"""seg-train: `seg-train [group=option ...] [key=value ...]`, Hydra's --help, --cfg job, --multirun."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.cli.common import config_dir, user_errors


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _train(cfg: DictConfig) -> float:
    from seg.engine.fit import fit  # imported here so --help and --cfg stay fast

    with user_errors("seg-train"):
        run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(HydraConfig.get().runtime.output_dir)
        result = fit(cfg, run_dir)
        return float(result["best_score"])  # the value a sweeper optimises
    raise AssertionError("unreachable")


def main() -> None:
    _train()


if __name__ == "__main__":
    main()
