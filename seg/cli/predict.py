"""seg-predict: `seg-predict ckpt=PATH input=IMAGE_OR_FOLDER [out_dir=...] [tta=true] [submission=...]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seg.cli.common import command, config_dir, user_errors


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    from seg.inference.predict import run_predict

    with user_errors("seg-predict"):
        run_predict(cfg)


def main() -> None:
    with command("seg-predict"):
        _predict()


if __name__ == "__main__":
    main()
