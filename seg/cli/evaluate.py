"""seg-eval: `seg-eval ckpt=PATH [split=test] [dataset.root=...] [out_dir=...] [overlays=worst|all|none]`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from seg.cli.common import command, config_dir, user_errors


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def _evaluate(cfg: DictConfig) -> None:
    from seg.inference.evaluate import run_eval

    with user_errors("seg-eval"):
        run_eval(cfg)


def main() -> None:
    # `dataset.root=...` overrides a key of the checkpoint's stored config, which eval.yaml cannot list
    # in advance; Hydra would demand `+dataset.root`. Accept the natural spelling.
    sys.argv = [f"++{a}" if a.startswith("dataset.") else a for a in sys.argv]
    with command("seg-eval"):
        _evaluate()


if __name__ == "__main__":
    main()
