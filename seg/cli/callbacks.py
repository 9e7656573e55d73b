"""Hydra callback for seg-train: settle the run (or sweep) folder before Hydra writes anything into it.

Hydra saves `.hydra/config.yaml` and `overrides.yaml` into the run folder before the task starts, so
the folder is settled earlier, at `on_run_start`, by the same `plan_run` that sweep jobs and `fit` use:
- a new run aimed at a folder that already holds checkpoints stops here (exit 2), leaving that run's
  `.hydra/` record as it was; a missing resume checkpoint stops here too;
- `resume=PATH/checkpoints/last.pt` runs in that run's own folder (its train.log goes on there);
- a resumed invocation records its config under `.hydra/resume-<time>/`, keeping the original;
- what this invocation creates is noted in the guard's StartRecord, so that a run stopped at start by
  a user error (seg.train.plan.StartFailed, seen in `on_run_end`) removes it again instead of leaving
  an empty run, or the record of a resume that never ran, behind;
- a sweep gets a folder of its own, and a new sweep into a named folder with checkpoints stops here
  (`on_multirun_start`).
Any failure in here stops the command: Hydra would only warn and go on writing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from seg import distributed
from seg.cli.common import fail, user_errors, user_message
from seg.errors import ConfigError, SegError
from seg.overrides import quoted
from seg.train.plan import StartFailed, continues_its_run, plan_run


@dataclass
class StartRecord:
    """What one seg-train invocation adds before its run starts (absolute, normalised paths)."""

    new_folders: list[Path] = field(default_factory=list)  # outermost first; the run folder last
    hydra_files: set[str] = field(default_factory=set)  # what Hydra writes into it: .hydra, train.log
    resume_record: Path | None = None  # .hydra/resume-<time>/
    started: bool = False  # set by fit once the run is built (and restored)

    def begin(self, new_folders: list[Path], hydra_files: set[str]) -> None:
        """A fresh record per run (one process may run seg-train more than once)."""
        self.new_folders, self.hydra_files, self.resume_record, self.started = new_folders, hydra_files, None, False

    def mark_started(self) -> None:
        self.started = True

    def discard(self) -> None:
        """After a user error at start: the error is on the console, so the folders this invocation
        created go again while its run folder holds nothing but Hydra's record and the log, and a
        resume's record goes (its lines in the run's train.log stay). Once the run has started,
        nothing is removed."""
        if self.started:
            return
        if self.resume_record is not None:
            shutil.rmtree(self.resume_record, ignore_errors=True)
        if not self.new_folders:
            return
        run_dir = self.new_folders[-1]
        if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= self.hydra_files:
            return
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in reversed(self.new_folders[:-1]):
            try:
                parent.rmdir()  # only while empty: another run may have started there meanwhile
            except OSError:
                break


class RunDirGuard(Callback):
    def __init__(self) -> None:
        self.record = StartRecord()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A job's result.json written after this belongs to this sweep: an earlier sweep's failures in
        # the same folder (since resumed, or not) are on the leaderboard but not this command's failure.
        self.sweep_started = time.time()
        self._guarded(_settle_sweep, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Hydra calls this after the last job (not after a job's bug or a signal, which end the command
        before): the sweep's answer, its leaderboard, is written into the sweep folder and printed; the
        jobs of this sweep that failed on a user error are listed and the command exits with 2."""
        from seg.summary import leaderboard  # a plain run never needs it

        sweep = Path(str(config.hydra.sweep.dir))
        with user_errors("seg-train"):
            rows, shown = leaderboard(sweep)
        if rows:
            print(f"seg-train: {len(rows)} job(s) in {sweep}, best first (summary.csv, summary.md):\n{shown}",
                  end="", flush=True)
        since = getattr(self, "sweep_started", 0.0)
        failed = [r for r in rows if r["status"] == "failed" and r["written"] >= since]
        if failed:
            fail("seg-train", f"{len(failed)} sweep job(s) failed:\n  " + "\n  ".join(
                f"job {r['job'] if r['job'] is not None else r['run_dir']} ({r['overrides']}): {r['reason']}"
                for r in failed))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.record.begin([], set())
        self._guarded(lambda c: _settle_ranks(c, self.record), config)

    def on_run_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any) -> None:
        """Hydra hands the task's exception over here before it re-raises it with a line of its own
        ("Error executing job ..."): a user error is reported here, as one line, and ends the command."""
        if job_return is None or job_return.status != JobStatus.FAILED:
            return
        error = getattr(job_return, "_return_value", None)
        if isinstance(error, StartFailed):
            self.record.discard()
        else:
            self.record.mark_started()
        if isinstance(error, SegError):
            fail("seg-train", str(error))

    def _guarded(self, settle: Callable[[DictConfig], None], config: DictConfig) -> None:
        """Hydra only warns about an exception in a callback and goes on to write its record into the
        folder, so every failure here stops the command (one line, exit 2) and removes what it created."""
        try:
            with user_errors("seg-train"):
                settle(config)
        except SystemExit:
            self.record.discard()
            raise
        except Exception as exc:  # not a user error: still never let Hydra go on and rewrite a run's record
            self.record.discard()
            fail("seg-train", f"cannot settle the run folder ({type(exc).__name__}: {exc})")


def _settle_sweep(config: DictConfig) -> None:
    """Two sweeps started in the same second would share multirun/<date>/<time>/ and so train their
    jobs into the same folders: claim a folder of its own, and hand it to the jobs as an override,
    since Hydra composes each job's config afresh from the master config's overrides. A folder named
    on the command line is used as named, but a new sweep there must not rewrite an earlier sweep's
    job records; a resumed sweep (resume=auto) records each job's invocation beside the original."""
    if distributed.env_dist().enabled:  # every process would run the whole sweep; refused before any folder
        raise ConfigError("--multirun under torchrun would run the whole sweep in every process: start each run "
                          "with torchrun, or sweep with hydra/launcher=slurm (or submitit_local), whose jobs start "
                          "one process per GPU (hydra.launcher.tasks_per_node)")
    with read_write(config.hydra), open_dict(config.hydra):
        _name_jobs_by_swept_keys(config)
        if not _chosen(config, "hydra.sweep.dir"):
            claimed = _claim(Path(str(config.hydra.sweep.dir)))
            config.hydra.sweep.dir = str(claimed)
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(str(claimed))}")
            return
        sweep = Path(str(config.hydra.sweep.dir))
        if config.get("resume"):
            subdir = f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}"
            config.hydra.output_subdir = subdir
            config.hydra.overrides.hydra.append(f"hydra.output_subdir={quoted(subdir)}")
            return
        earlier = sorted(p.relative_to(sweep) for p in sweep.glob("*/checkpoints/*.pt"))
        if earlier:
            shown = ", ".join(str(p) for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
            raise ConfigError(
                f"hydra.sweep.dir={sweep} already holds checkpoints of an earlier sweep ({shown}); they are "
                "kept. Continue that sweep with the same command and resume=auto, or choose another hydra.sweep.dir."
            )


def _name_jobs_by_swept_keys(config: DictConfig) -> None:
    """Job folders are named by their overrides (seg/cli/job_dir.py): the ones every job shares (the
    command's fixed `trainer.epochs=2`) would only lengthen each name, so they are left out of it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}  # `model.wf=3 model.wf=2,3` sweeps it
    fixed = [o.key_or_group for o in parsed if o.key_or_group not in swept]
    if not fixed:
        return
    naming = config.hydra.job.config.override_dirname
    keys = list(dict.fromkeys([*naming.exclude_keys, *fixed]))
    naming.exclude_keys = keys
    config.hydra.overrides.hydra.append(
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(quoted(k) for k in keys)}]")


def _settle_ranks(config: DictConfig, record: StartRecord) -> None:
    """One folder for every process of a torchrun run: `${now:...}` differs between processes started
    in different seconds, and each would claim its own. Rank 0 settles it (or fails, and the others
    stop with it) and hands it over; the other ranks write nothing there: no Hydra record, no log
    file, and only their warnings on the console."""
    d = distributed.env_dist()
    if not d.enabled:
        _settle_run(config, record)
        return
    from seg.engine.builders import resolve_device

    device = resolve_device(str(config.trainer.device))
    if device.index is not None:  # every rank refuses alike, before any joins the group
        raise ConfigError(f"trainer.device={device} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                          "use trainer.device=auto or cuda")
    distributed.join(device.type)
    if d.main:
        try:
            _settle_run(config, record)
        except BaseException as exc:
            distributed.broadcast({"error": user_message(exc) or f"{type(exc).__name__}: {exc}"})
            raise
        distributed.broadcast({"dir": str(config.hydra.run.dir)})
        return
    verdict = distributed.broadcast(None)
    if "error" in verdict:
        raise ConfigError(f"rank {d.rank} stops with rank 0, which could not start the run")
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.run.dir = verdict["dir"]
        config.hydra.output_subdir = None
        root = config.hydra.job_logging.get("root")
        if root is not None:
            root.handlers = [h for h in root.get("handlers", []) if h != "file"]
            root.level = "WARNING"


def _settle_run(config: DictConfig, record: StartRecord) -> None:
    with read_write(config.hydra), open_dict(config.hydra):
        # Resolve ${now:...} and `a/../b` once, so the folder checked here is the folder Hydra creates.
        target = Path(os.path.abspath(str(config.hydra.run.dir)))
        new_folders = _missing(target)
        resume = config.get("resume")
        # A new run, or a loose checkpoint (which continues in this command's own folder), claims the
        # default folder; resume=auto and a run's own checkpoint name theirs.
        loose = bool(resume) and resume != "auto" and not continues_its_run(Path(str(resume)).expanduser())
        if (not resume or loose) and not _chosen(config, "hydra.run.dir"):
            # Claimed before the plan: a run started in the same second may own `target` already.
            claimed = _claim(target)
            new_folders = [*(p for p in new_folders if p != target), claimed]
            target = claimed
        subdir = config.hydra.output_subdir  # null: no record; `.`: files straight in the run folder
        record.begin(new_folders, {f"{config.hydra.job.name}.log", *(Path(subdir).parts[:1] if subdir else ())})
        given = Path(config.get("run_dir") or target)
        plan = plan_run(config, given)  # a refusal here removes the folder just claimed
        if plan.run_dir != given:  # resume=PATH in a run's checkpoints/: that run's own folder
            target = plan.run_dir
            record.new_folders = _missing(target)
        config.hydra.run.dir = str(target)
        if plan.resuming and (target / ".hydra").is_dir():
            # Claimed like a run folder: a refused resume in the same second as an earlier one must not
            # take over (and then remove) that one's record.
            record.resume_record = _claim(target / ".hydra" / f"resume-{datetime.now():%Y-%m-%d_%H-%M-%S}")
            config.hydra.output_subdir = str(record.resume_record.relative_to(target))


def _missing(folder: Path) -> list[Path]:
    """The folders that creating `folder` adds, outermost first."""
    return [p for p in (*reversed(folder.parents), folder) if not p.exists()]


def _chosen(config: DictConfig, key: str) -> bool:
    """Whether the command line set `key` (a folder the user named is used as named)."""
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _claim(folder: Path) -> Path:
    """The timestamped default folder, created here and now: mkdir fails if it exists, so two runs
    started in the same second get `<time>` and `<time>-1` instead of training into one folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = folder if n == 0 else folder.with_name(f"{folder.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise SystemExit(f"seg-train: error: cannot find a free run folder next to {folder}")
