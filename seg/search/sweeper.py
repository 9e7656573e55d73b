"""A Hydra sweeper on Optuna: Optuna samples, prunes and stores the study; Hydra's launcher runs the jobs.

Each trial is one seg-train job in `<hydra.sweep.dir>/<trial number>_<its overrides>/`: the launcher numbers
jobs from `initial_job_idx`, which is the trial's number. A job learns its trial from three overrides
(`search.storage=... search.study=... search.trial=N`) and reports its validations to it
(seg/search/report.py), so the median pruner can stop it early; it then ends normally with result.json
status "pruned". Here each job's outcome is told to Optuna from that record: pruned, failed (a user error
seg-train recorded, the search goes on) or complete with the job's best monitored value.

The study lives in `<hydra.sweep.dir>/optuna.db`. The same command plus `resume=auto` continues it: the
trials a killed search left RUNNING run again under their own numbers (their jobs continue from their
folder's last.pt), then new ones until `n_trials` have finished. A new search into a folder that holds a
study is refused.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from seg.errors import ConfigError
from seg.search.config import DB_NAME

log = logging.getLogger("seg")


class OptunaSweeper(Sweeper):
    def __init__(self, *, study_name: str, storage: str | None, n_trials: int, n_jobs: int, sampler: Any,
                 seed: int | None, pruner: Any, n_startup_trials: int, n_warmup_steps: int,
                 params: dict[str, str] | None = None) -> None:
        self.study_name, self.storage, self.n_trials, self.n_jobs = study_name, storage, n_trials, n_jobs
        self.sampler, self.seed = str(getattr(sampler, "value", sampler)), seed
        self.pruning = {"pruner": str(getattr(pruner, "value", pruner)), "n_startup_trials": n_startup_trials,
                        "n_warmup_steps": n_warmup_steps}
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        # Checked here, not in __init__: Hydra would wrap an error raised there in lines of its own.
        counts = {"n_trials": self.n_trials, "n_jobs": self.n_jobs, **self.pruning}
        for name, low in (("n_trials", 1), ("n_jobs", 1), ("n_startup_trials", 0), ("n_warmup_steps", 0)):
            value = counts[name]
            if value < low:
                raise ConfigError(f"hydra.sweeper.{name}={value} must be an integer >= {low}")
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Ask, launch, tell, in batches of n_jobs, until n_trials trials have finished."""
        from seg.search.report import optuna_module
        from seg.search.space import parse_space

        optuna = optuna_module()
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = parse_space(self.params, arguments, parser)
        self.validate_batch_is_legal([space.probe()])  # a mistyped key fails before a study exists
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        study, url = self._study(optuna, sweep_dir)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        states = optuna.trial.TrialState
        returns: list[Sequence[JobReturn]] = []
        left = study.get_trials(deepcopy=False, states=(states.RUNNING,))  # a killed search's, run again
        if left:
            log.info("Optuna: trial(s) %s were running when the search stopped: they run again",
                     ", ".join(str(t.number) for t in left))
        while True:
            if left:
                batch, left = [(t.number, t.params) for t in left[:self.n_jobs]], left[self.n_jobs:]
            else:
                finished = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL)))
                todo = min(self.n_jobs, self.n_trials - finished)
                if todo <= 0:
                    break
                asked = [study.ask(space.distributions) for _ in range(todo)]
                batch = [(t.number, t.params) for t in asked]
            returns += self._launch(optuna, study, space, batch, url)
        _log_best(optuna, study, self.config)
        return returns

    def _study(self, optuna: Any, sweep_dir: Path) -> tuple[Any, str]:
        """Create the study, or load it for resume=auto; a storage that cannot be opened (not a database,
        an unknown URL scheme, a folder that does not exist) is one line naming it."""
        try:
            return self._open_study(optuna, sweep_dir)
        except ConfigError:
            raise
        except Exception as exc:  # SQLAlchemy's, Optuna's or the file system's
            url = self.storage or f"sqlite:///{sweep_dir / DB_NAME}"
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ConfigError(f"the Optuna storage {url} cannot be used ({reason[:200]}); expected an Optuna "
                              "database (an SQLite file it made, or a database URL): choose another "
                              "hydra.sweep.dir or hydra.sweeper.storage") from None

    def _open_study(self, optuna: Any, sweep_dir: Path) -> tuple[Any, str]:
        """_study's work; refuses to start a new search over an old one."""
        assert self.config is not None
        db = sweep_dir / DB_NAME
        url = self.storage or f"sqlite:///{db}"
        t = self.config.trainer
        mode = str(getattr(t.monitor_mode, "value", t.monitor_mode))
        direction = "maximize" if mode == "max" else "minimize"
        storage = optuna.storages.get_storage(url)
        exists = (self.storage is not None or db.is_file()) and self.study_name in optuna.get_all_study_names(storage)
        where = (f"hydra.sweep.dir={sweep_dir} already holds the Optuna study {self.study_name!r} ({DB_NAME})"
                 if self.storage is None else f"{url} already holds the Optuna study {self.study_name!r}")
        if exists and self.config.get("resume") != "auto":
            raise ConfigError(f"{where}; continue that search with the same command plus resume=auto, or choose "
                              f"another {'hydra.sweep.dir' if self.storage is None else 'hydra.sweeper.study_name'}")
        if exists:
            before = len(storage.get_all_trials(storage.get_study_id_from_name(self.study_name), deepcopy=False))
            sampler = self._sampler(optuna, before)
            study = optuna.load_study(study_name=self.study_name, storage=storage, sampler=sampler)
            if study.direction.name.lower() != direction or study.user_attrs.get("monitor", t.monitor) != t.monitor:
                raise ConfigError(
                    f"the Optuna study {self.study_name!r} was made to {study.direction.name.lower()} "
                    f"{study.user_attrs.get('monitor')}, not to {direction} {t.monitor}: resume it with its own "
                    "trainer.monitor and trainer.monitor_mode, or choose another hydra.sweep.dir")
            log.info("Optuna: continuing the study %r in %s (%d trials so far)", self.study_name, url,
                     len(study.trials))
        else:
            study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=self._sampler(optuna, 0),
                                        direction=direction)
            log.info("Optuna: study %r in %s, to %s %s (a stopped search continues with the same command plus "
                     "hydra.sweep.dir=%s resume=auto)", self.study_name, url, direction, t.monitor, sweep_dir)
        study.set_user_attr("monitor", str(t.monitor))
        study.set_user_attr("pruning", self.pruning)  # what each job's trial prunes with (seg/search/report.py)
        return study, url

    def _sampler(self, optuna: Any, before: int) -> Any:
        """The sampler, seeded with `seed` plus the trials the study already has: a resumed search started
        again from the seed itself would draw the first session's parameters once more."""
        seed = None if self.seed is None else self.seed + before
        return (optuna.samplers.TPESampler(seed=seed) if self.sampler == "tpe"
                else optuna.samplers.RandomSampler(seed=seed))

    def _launch(self, optuna: Any, study: Any, space: Any, batch: list[tuple[int, dict[str, Any]]],
                url: str) -> list[Sequence[JobReturn]]:
        """Launch the batch (one launch per run of consecutive trial numbers, so that each job's number is
        its trial's), then tell Optuna every outcome; a job's bug is raised once all are told."""
        from seg.search.space import quoted

        jobs = [(n, [*space.overrides(params), f"search.storage={quoted(url)}",
                     f"search.study={quoted(self.study_name)}", f"search.trial={n}"]) for n, params in batch]
        self.validate_batch_is_legal([o for _, o in jobs])
        groups: list[list[tuple[int, list[str]]]] = []
        for job in jobs:
            if groups and groups[-1][-1][0] + 1 == job[0]:
                groups[-1].append(job)
            else:
                groups.append([job])
        returns: list[Sequence[JobReturn]] = []
        bugs = []
        for group in groups:
            results = self.launcher.launch([o for _, o in group], initial_job_idx=group[0][0])
            returns.append(results)
            for (number, _), ret in zip(group, results):
                if not _tell(optuna, study, number, ret):
                    bugs.append(ret)
        for ret in bugs:
            _ = ret.return_value  # re-raises the job's exception, as Hydra's basic sweeper does
        return returns


def _tell(optuna: Any, study: Any, number: int, ret: JobReturn) -> bool:
    """Tell Optuna how trial `number` ended; False for a job that raised (a bug: told as failed)."""
    states = optuna.trial.TrialState
    if ret.status != JobStatus.COMPLETED:
        study.tell(number, state=states.FAIL)
        log.error("Optuna: trial %d failed with an error (below)", number)
        return False
    record = _result(ret)
    status = record.get("status")
    value = ret.return_value
    if status == "pruned":
        study.tell(number, state=states.PRUNED)
        log.info("Optuna: trial %d pruned after epoch %s", number, record.get("epoch"))
    elif status == "failed" or not isinstance(value, (int, float)) or not math.isfinite(value):
        study.tell(number, state=states.FAIL)
        log.warning("Optuna: trial %d failed: %s", number, record.get("reason") or f"it returned {value!r}")
    else:
        study.tell(number, float(value))
        log.info("Optuna: trial %d complete: %s=%.6g", number, record.get("monitor", "value"), value)
    return True


def _result(ret: JobReturn) -> dict[str, Any]:
    """The job's result.json (seg-train writes one for every job that ends, failed ones included)."""
    cfg, hc = ret.cfg, ret.hydra_cfg
    folder = cfg.get("run_dir") if cfg is not None else None
    if not folder and hc is not None:
        folder = hc.hydra.runtime.output_dir
    try:
        data = json.loads((Path(str(folder)) / "result.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _log_best(optuna: Any, study: Any, config: DictConfig) -> None:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    shown = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        log.info("Optuna: study %r: %s; none complete", study.study_name, shown)
        return
    best = study.best_trial
    log.info("Optuna: study %r: %s; best trial %d: %s=%.6g with %s", study.study_name, shown, best.number,
             config.trainer.monitor, best.value, " ".join(f"{k}={v}" for k, v in best.params.items()))
