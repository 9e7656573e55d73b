"""What a job of the Optuna sweeper does with its trial: report the monitored value after each validation
and stop when the pruner says so (seg.train.fit calls this; outside a search it is never built).

The job finds its trial from `search.storage`, `search.study` and `search.trial`, which the sweeper
(seg/search/sweeper.py) passes to every job, and the pruner from the study's `pruning` record (the
sweeper's settings), so the job needs nothing else from the search. Optuna compares in the study's
direction, which is checked once against trainer.monitor_mode here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg.errors import ConfigError

log = logging.getLogger("seg")


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("the Optuna search needs Optuna: pip install 'seg[optuna]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # seg logs each trial's outcome itself
    return optuna


def build_pruner(optuna: Any, pruning: dict[str, Any]) -> Any:
    """Optuna's pruner from the sweeper's settings (hydra.sweeper.pruner, n_startup_trials, n_warmup_steps)."""
    if pruning.get("pruner", "median") == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=int(pruning.get("n_startup_trials", 5)),
                                       n_warmup_steps=int(pruning.get("n_warmup_steps", 0)))


class TrialReporter:
    """One job's trial: `report(epoch, value)` after each validation; `pruned` once the pruner stopped it."""

    def __init__(self, *, trial: Any, number: int, monitor: str) -> None:
        self.trial, self.number, self.monitor = trial, number, monitor
        self.pruned = False

    def report(self, epoch: int, value: float) -> bool:
        """Report the epoch's monitored value; True when the trial should stop here."""
        if not math.isfinite(value):  # Optuna keeps no non-finite intermediate value; the run goes on
            return False
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned = True
            log.info("Optuna trial %d pruned after epoch %d: %s=%.4f is behind the median of the finished "
                     "trials at that epoch", self.number, epoch, self.monitor, value)
        return self.pruned


def trial_reporter(cfg: DictConfig, mode: str) -> TrialReporter | None:
    """The trial this run reports to, or None: not a search job, or a trial already finished (a run of a
    search continued by hand afterwards trains on without reporting)."""
    search = cfg.get("search")
    if not isinstance(search, DictConfig) or search.get("trial") is None:
        return None
    url, name, number = search.get("storage"), search.get("study"), int(search.trial)
    if not url or not name:
        raise ConfigError(f"search.trial={number} needs search.storage and search.study too (the Optuna sweeper "
                          "sets all three); set search.trial=null to train without reporting to a study")
    optuna = optuna_module()
    db = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    if db is not None and not db.is_file():  # Optuna would create an empty database there
        raise ConfigError(f"search.storage={url}: no such database (moved with its sweep folder?); give its "
                          "new place as search.storage=sqlite:///PATH, or search.trial=null to train without it")
    try:
        storage = optuna.storages.get_storage(url)
        study_id = storage.get_study_id_from_name(name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    except KeyError:
        raise ConfigError(f"search.storage={url} holds no trial {number} of a study {name!r}; set "
                          "search.trial=null to train without reporting to a study") from None
    except Exception as exc:  # not a database, an unknown URL scheme: SQLAlchemy's or Optuna's own error
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"search.storage={url} cannot be used ({reason[:200]}); expected the Optuna database "
                          "of the search this run belongs to, or search.trial=null to train without it") from None
    state = storage.get_trial(trial_id).state
    if state.is_finished():
        log.warning("Optuna trial %d of %r has already ended (%s): this run does not report to it", number, name,
                    state.name.lower())
        return None
    # The job never samples: a random sampler keeps the study's own sampler (and its seed) out of it.
    pruning = storage.get_study_user_attrs(study_id).get("pruning") or {}
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=build_pruner(optuna, pruning))
    wanted = "maximize" if mode == "max" else "minimize"
    if study.direction.name.lower() != wanted:
        raise ConfigError(f"the Optuna study {name!r} is to {study.direction.name.lower()} its value, but "
                          f"trainer.monitor_mode={mode}: run the search with the monitor_mode it was made with")
    monitor = study.user_attrs.get("monitor")
    if monitor is not None and monitor != cfg.trainer.monitor:
        raise ConfigError(f"the Optuna study {name!r} ranks trials by {monitor}, but trainer.monitor="
                          f"{cfg.trainer.monitor}: run the search with the monitor it was made with")
    return TrialReporter(trial=optuna.trial.Trial(study, trial_id), number=number, monitor=str(cfg.trainer.monitor))

