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
from omegaconf import DictConfig, open_dict

from seg.cli.common import EXIT_USER_ERROR, command, config_dir, user_message
from seg.errors import SegError

log = logging.getLogger("seg")

PROG = "seg-train"
_sweep_failures: list[str] = []


def _run(cfg: DictConfig, hc: Any) -> dict[str, Any]:
    """Plan the folder (the callback already settled it for a single run; a sweep job plans its own),
    take the stored config when resuming, train. A user error before the run is built is a
    StartFailed, so the run-folder guard removes what this invocation created."""
    from seg.train.fit import fit  # imported here so --help and --cfg stay fast
    from seg.train.plan import StartFailed, plan_run
    from seg.train.resume import resumed_config

    plan = None
    folder = Path(cfg.run_dir) if cfg.run_dir else Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN and cfg.resume == "auto" and not (folder / "checkpoints" / "last.pt").is_file():
        # An interrupted sweep resumed: a job that never saved a checkpoint starts now.
        log.info("%s: job %s has no checkpoint to continue: it starts from the beginning", PROG, hc.job.num)
        with open_dict(cfg):
            cfg.resume = None
    try:
        plan = plan_run(cfg, folder)
        if plan.resuming:
            cfg = resumed_config(cfg, plan, list(hc.overrides.task), groups=set(hc.runtime.choices))
        return fit(cfg, plan)
    except Exception as exc:
        message = user_message(exc)
        if message is None:  # a bug: its traceback
            raise
        failure = SegError if plan is not None and plan.started else StartFailed
        raise failure(message) from None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _train(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # One bad combination of a sweep is reported, and the other jobs still run.
        try:
            result = _run(cfg, hc)
        except SegError as exc:
            _sweep_failures.append(f"job {hc.job.num} ({' '.join(hc.overrides.task)}): {exc}")
            log.error("%s: job %s failed: %s", PROG, hc.job.num, exc)
            return math.nan
    else:
        result = _run(cfg, hc)  # a SegError reaches the guard's on_run_end, then main()
    if result.get("stopped_by"):  # saved and stopped by a signal: not a finished run, for schedulers too
        raise SystemExit(128 + signal.Signals[result["stopped_by"]].value)
    return float(result["best_score"])  # the value a sweeper optimises


def main() -> None:
    _sweep_failures.clear()  # one process may run seg-train more than once (tests, notebooks)
    with command(PROG):  # a signal before training or a second one during it; the task's SegError
        _train()
    if _sweep_failures:
        print(f"{PROG}: error: {len(_sweep_failures)} sweep job(s) failed:\n  " + "\n  ".join(_sweep_failures),
              file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
