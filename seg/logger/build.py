"""The run's loggers behind one object: TensorBoard always, plus what `logger=...` adds (MLflow).

fit() and its helpers talk to a TensorBoardLogger; Loggers is one, which also hands each epoch's scalars,
the best metrics and the run's end to the other sinks. Overlay images stay in TensorBoard.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from seg.allowlist import check_targets, config_targets
from seg.errors import ConfigError
from seg.logger.tensorboard import TensorBoardLogger

TENSORBOARD = "seg.logger.tensorboard.TensorBoardLogger"  # configs/logger/tensorboard.yaml: nothing beside it


class Sink(Protocol):
    """What a logger beside TensorBoard implements (seg.logger.mlflow_logger.MLflowLogger)."""

    def scalars(self, values: Mapping[str, float], step: int) -> None: ...
    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str, best_checkpoint: str | Path | None = None) -> None: ...
    def close(self) -> None: ...


class Loggers(TensorBoardLogger):
    """TensorBoard in `log_dir`, and `extra` sinks fed the same scalars."""

    def __init__(self, *, log_dir: str | Path, purge_step: int | None = None, extra: Sequence[Sink] = ()) -> None:
        super().__init__(log_dir, purge_step=purge_step)
        self.extra = list(extra)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        super().scalars(values, step)
        for sink in self.extra:
            sink.scalars(values, step)

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        super().hparams(params, metrics, step)
        for sink in self.extra:
            sink.hparams(params, metrics, step)

    def flush(self) -> None:
        super().flush()
        for sink in self.extra:
            sink.flush()

    def finish(self, status: str, best_checkpoint: str | Path | None = None) -> None:
        """The run ended: `status` is seg's (finished, stopped, pruned), best_checkpoint its best.pt."""
        for sink in self.extra:
            sink.finish(status, best_checkpoint)

    def close(self) -> None:
        """Ends the sinks not finished (as failed) and closes TensorBoard, whatever a sink raises."""
        try:
            for sink in self.extra:
                sink.close()
        finally:
            super().close()


class Silent:
    """The loggers of a data-parallel process other than rank 0: rank 0 alone writes TensorBoard and
    the other sinks, so the run has one set of curves."""

    def scalars(self, values: Mapping[str, float], step: int) -> None: ...
    def panels(self, tag: str, panels: Any, step: int, names: list[str]) -> None: ...
    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None: ...
    def text(self, tag: str, text: str, step: int = 0) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str, best_checkpoint: str | Path | None = None) -> None: ...
    def close(self) -> None: ...


def build_loggers(cfg: DictConfig, run_dir: str | Path, *, purge_step: int | None = None,
                  overrides: Sequence[str] = ()) -> Loggers | Silent:
    """TensorBoard in <run>/tb (purged from `purge_step` on, which a resume sets) and the sink the
    `logger` node names, built first so that a store it cannot open fails before tb/ is written. A config
    without a logger node (stored before there was one) logs to TensorBoard only."""
    from seg import distributed

    if not distributed.current().main:
        return Silent()
    run_dir = Path(run_dir)
    node = cfg.get("logger") if "logger" in cfg else None
    extra = []
    if isinstance(node, DictConfig) and node.get("_target_") != TENSORBOARD:
        config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        extra.append(_sink(node, run_dir=run_dir, config=config, overrides=list(overrides),
                           resuming=purge_step is not None))
    return Loggers(log_dir=run_dir / "tb", purge_step=purge_step, extra=extra)


def _sink(node: DictConfig, **context: Any) -> Sink:
    """The node's class with its options and the run's context; allowed targets only, a key the class does
    not take as one line."""
    if "_target_" not in node:
        raise ConfigError("the logger config has no _target_; choose logger=tensorboard or logger=mlflow")
    check_targets(node, "logger", config_targets(node))
    options = OmegaConf.to_container(node, resolve=True)
    target = str(options.pop("_target_"))
    cls = get_class(target)
    try:
        inspect.signature(cls).bind(**options, **context)
    except TypeError as exc:
        raise ConfigError(f"could not build the logger ({target}): {exc}. Check the logger.* options.") from None
    return cls(**options, **context)
