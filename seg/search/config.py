"""The Optuna sweeper's settings (`hydra.sweeper.*` once `hydra/sweeper=seg_optuna`, which each
configs/hparams_search/ file selects), registered in Hydra's ConfigStore by seg.config before seg-train composes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore

# Hydra instantiates sweepers only from its plugin namespace: this subclass of seg.search.sweeper.OptunaSweeper.
PLUGIN_CLASS = "hydra_plugins.seg_optuna.optuna_sweeper.OptunaSweeper"
DB_NAME = "optuna.db"  # in hydra.sweep.dir unless hydra.sweeper.storage names another database


class SamplerName(str, Enum):
    tpe = "tpe"  # Optuna's TPESampler (its first 10 trials are random)
    random = "random"


class PrunerName(str, Enum):
    median = "median"  # stop a trial whose validation is behind the median of the finished trials at that epoch
    none = "none"


@dataclass
class OptunaSweeperConf:
    _target_: str = PLUGIN_CLASS
    study_name: str = "seg"
    storage: str | None = None  # an Optuna storage URL; null: sqlite:///<hydra.sweep.dir>/optuna.db
    n_trials: int = 20  # finished trials (complete, pruned or failed) the search ends with
    n_jobs: int = 1  # trials asked at once and handed to the launcher together
    sampler: SamplerName = SamplerName.tpe
    seed: int | None = None  # the sampler's seed (configs/hparams_search/ use the run's ${seed})
    pruner: PrunerName = PrunerName.median
    n_startup_trials: int = 5  # finished trials before pruning starts
    n_warmup_steps: int = 0  # epochs of every trial that are never pruned
    # key: Hydra override value, e.g. optimizer.lr: tag(log, interval(1e-4, 1e-2)), loss: choice(dice, bce);
    # a plain value is fixed for every trial. Keys given on the command line take precedence.
    params: dict[str, str] = field(default_factory=dict)


def register_sweeper(cs: ConfigStore) -> None:
    """`hydra/sweeper: seg_optuna`, and the plugin class itself: Hydra finds plugins by listing the
    `hydra_plugins` namespace, which an editable install (pip install -e) hides, so it is registered by
    hand as well. Without the plugin module (an install that left it out) nothing is stored, and choosing
    the sweeper fails in Hydra's one line: could not find 'hydra/sweeper/seg_optuna'."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # lists the namespace first: the import below then finds what it loaded
    try:
        from hydra_plugins.seg_optuna.optuna_sweeper import OptunaSweeper
    except ImportError:
        return
    plugins.register(OptunaSweeper)
    cs.store(group="hydra/sweeper", name="seg_optuna", node=OptunaSweeperConf, provider="seg")
