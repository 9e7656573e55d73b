"""seg-train: `seg-train [group=option ...] [key=value ...]`, Hydra's --help, --cfg job, --multirun."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from seg.cli import job_dir
from seg.cli.common import command, config_dir, user_message
from seg.errors import SegError

log = logging.getLogger("seg")

PROG = "seg-train"
job_dir.register()  # at import: a launcher's job process (submitit) unpickles _train from here, then names its folder


def _run(cfg: DictConfig, hc: Any) -> dict[str, Any]:
    """Plan the folder (the callback already settled it for a single run; a sweep job plans its own),
    take the stored config when resuming, train. A user error before the run is built is a
    StartFailed, so the run-folder guard removes what this invocation created."""
    from seg.train.fit import fit  # imported here so --help and --cfg stay fast
    from seg.train.plan import StartFailed, plan_run
    from seg.train.resume import resumed_config

    plan = None
    folder = _job_folder(cfg, hc)
    saved = (folder / "checkpoints" / "last.pt").is_file()
    if hc.mode == RunMode.MULTIRUN and cfg.resume == "auto" and not saved:
        # An interrupted sweep resumed: a job that never saved a checkpoint starts now.
        log.info("%s: job %s has no checkpoint to continue: it starts from the beginning", PROG, hc.job.num)
        with open_dict(cfg):
            cfg.resume = None
    elif hc.mode == RunMode.MULTIRUN and not cfg.resume and saved and os.environ.get("SUBMITIT_EXECUTOR"):
        # submitit requeued this job after a time limit or preemption (a new sweep into a folder with
        # checkpoints was refused at its start, so these are this job's own): it continues exactly.
        log.info("%s: job %s was requeued: it continues from %s", PROG, hc.job.num, folder / "checkpoints" / "last.pt")
        with open_dict(cfg):
            cfg.resume = "auto"
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
    from seg import distributed

    hc = HydraConfig.get()
    distributed.adopt_submitit_env()  # a SLURM job's tasks: the variables torchrun would set
    main_rank = distributed.env_dist().main
    if not main_rank and hc.mode == RunMode.MULTIRUN:
        distributed.quiet_log_file()  # Hydra opened the job's train.log in every task; rank 0 writes it
    try:
        return _train_job(cfg, hc, main_rank)
    finally:
        # The process group goes while every rank is still here; main() then ends a torchrun worker
        # without the interpreter's teardown, where gloo's leftover threads could abort it.
        distributed.leave()


def _train_job(cfg: DictConfig, hc: Any, main_rank: bool) -> float:
    if hc.mode == RunMode.MULTIRUN:
        # One bad combination of a sweep is reported, and the other jobs still run.
        began = time.monotonic()
        try:
            result = _run(cfg, hc)
        except SegError as exc:
            log.error("%s: job %s failed: %s", PROG, hc.job.num, exc)
            if main_rank:  # the sweep's leaderboard lists it from this record, its end reports it (RunDirGuard)
                _record_failure(cfg, hc, str(exc), time.monotonic() - began)
            return math.nan
    else:
        result = _run(cfg, hc)  # a SegError reaches the guard's on_run_end, then main()
    if result.get("stopped_by"):  # saved and stopped by a signal: not a finished run, for schedulers too
        stopped = signal.Signals[result["stopped_by"]]
        handler = signal.getsignal(stopped)  # training's own handler is gone: what was there before it
        if stopped in (signal.SIGUSR1, signal.SIGUSR2) and os.environ.get("SUBMITIT_EXECUTOR") and callable(handler):
            handler(stopped.value, None)  # submitit's: rank 0 requeues the job (it continues from last.pt)
        raise SystemExit(128 + stopped.value)
    return float(result["best_score"])  # the value a sweeper optimises


def _job_folder(cfg: DictConfig, hc: Any) -> Path:
    return Path(cfg.run_dir) if cfg.run_dir else Path(hc.runtime.output_dir)


def _record_failure(cfg: DictConfig, hc: Any, reason: str, wall_s: float) -> None:
    """A failed job's result.json (fit writes none for it): status, the one-line reason, and what the
    leaderboard shows of every job. Without it the sweep would end as if the job had never run."""
    from seg.summary import write_result

    try:  # the config may be what is wrong: a record without the monitor is still a record
        t = cfg.trainer
        monitor, mode = str(t.monitor), str(getattr(t.monitor_mode, "value", t.monitor_mode))
    except Exception:
        monitor = mode = None
    record = {"status": "failed", "reason": " ".join(reason.split()), "overrides": list(hc.overrides.task),
              "job": hc.job.num, "monitor": monitor, "monitor_mode": mode, "wall_s": round(wall_s, 3)}
    folder = _job_folder(cfg, hc)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        record["run_dir"] = str(folder.resolve())
        write_result(folder, record)
    except OSError as exc:  # unrecorded, the failure would go unreported: stop the sweep, saying both
        raise SegError(f"job {hc.job.num} failed ({reason}), and its result.json could not be written "
                       f"({exc.strerror or exc}: {exc.filename or folder})") from None


def main() -> None:
    # A signal before training or a second one during it; the task's SegError. A sweep's failed jobs are
    # reported, exit 2, by the run-folder guard's on_multirun_end, from the sweep's leaderboard.
    from seg import distributed

    def entry() -> None:
        with command(PROG):
            _train()

    distributed.run_entry(entry)


if __name__ == "__main__":
    main()
