"""seg-export: `seg-export ckpt=PATH [format=onnx|torchscript] [out=FILE] [dataset.root=...]`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from seg.cli.common import command, config_dir, user_errors


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def _export(cfg: DictConfig) -> None:
    from seg.inference.export import run_export

    with user_errors("seg-export"):
        run_export(cfg)


def main() -> None:
    # `dataset.root=...` (where the validation images for the parity check are on this machine) overrides a
    # key of the checkpoint's stored config, which export.yaml cannot list; Hydra would demand `+dataset.root`.
    sys.argv = [f"++{a}" if a.startswith("dataset.") else a for a in sys.argv]
    with command("seg-export"):
        _export()


if __name__ == "__main__":
    main()
