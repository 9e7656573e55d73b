"""seg-train: `seg-train [group=option ...] [key=value ...]`, Hydra's --help, --cfg job, --multirun."""

from __future__ import annotations

import logging
import math
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from seg.cli.common import EXIT_USER_ERROR, config_dir, hydra_errors, interrupts, user_errors
from seg.errors import SegError

log = logging.getLogger("seg")

PROG = "seg-train"
_sweep_failures: list[str] = []


def _run(cfg: DictConfig) -> dict[str, Any]:
    from seg.cli.callbacks import STARTING
    from seg.train.fit import fit  # imported here so --help and --cfg stay fast
    from seg.train.resume import resumed_config

    hc = HydraConfig.get()
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(hc.runtime.output_dir)
    if cfg.resume:
        cfg = resumed_config(cfg, run_dir, list(hc.overrides.task), groups=set(hc.runtime.choices))
    return fit(cfg, run_dir, on_start=STARTING.mark_started)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _train(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # One bad combination of a sweep is reported, and the other jobs still run.
        try:
            result = _run(cfg)
        except SegError as exc:
            _sweep_failures.append(f"job {hc.job.num} ({' '.join(hc.overrides.task)}): {exc}")
            log.error("%s: job %s failed: %s", PROG, hc.job.num, exc)
            return math.nan
    else:
        try:
            with user_errors(PROG):
                result = _run(cfg)
        except SystemExit as exc:
            if exc.code == EXIT_USER_ERROR:
                from seg.cli.callbacks import STARTING

                STARTING.discard()  # only what this invocation created, and only before the run started
            raise
    if result.get("stopped_by"):  # saved and stopped by a signal: not a finished run, for schedulers too
        raise SystemExit(128 + signal.Signals[result["stopped_by"]].value)
    return float(result["best_score"])  # the value a sweeper optimises


def main() -> None:
    with interrupts(PROG), hydra_errors(PROG):  # a signal before training, or a second one during it
        _train()
    if _sweep_failures:
        print(f"{PROG}: error: {len(_sweep_failures)} sweep job(s) failed:\n  " + "\n  ".join(_sweep_failures),
              file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
