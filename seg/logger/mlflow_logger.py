"""logger=mlflow: one MLflow run per seg run, beside TensorBoard.

It logs the run's params (seg.logger.hparams.run_hparams), the per-epoch scalars TensorBoard gets (sent
once per epoch, in one batch, at flush), the resolved config, the best checkpoint as an artifact at the
end and the run's status. A resumed seg run continues the same MLflow run: its id is kept in
`<run>/mlflow_run_id`. MLflow is imported only here, when a run asks for it, so seg runs without it.

The default store is an SQLite file in the folder that holds the run folder (a sweep's jobs share the
sweep folder's), its artifacts in `mlartifacts/` beside it, so `mlflow ui --backend-store-uri
sqlite:///<folder>/mlflow.db` opens it with no server to set up; nothing lands in the current directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from seg.errors import ConfigError

try:  # POSIX; elsewhere a sweep's parallel jobs should log to a tracking server
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]
from seg.logger.hparams import run_hparams

log = logging.getLogger("seg")

INSTALL = "logger=mlflow needs MLflow: pip install 'seg[mlflow]'"
RUN_ID_FILE = "mlflow_run_id"
STORE_FILE = "mlflow.db"
ARTIFACTS = "mlartifacts"  # what `mlflow server` calls its artifact folder too
# seg's run status -> MLflow's (a run that ends without finish(), by an exception, is FAILED)
STATUSES = {"finished": "FINISHED", "stopped": "KILLED", "pruned": "KILLED", "failed": "FAILED"}
BATCH = 100  # MLflow takes at most 100 params or tags (1000 metrics) per log_batch call
MAX_KEY, MAX_VALUE = 250, 6000  # MLflow's limits on a key's and a param's length


def _mlflow() -> Any:
    try:
        import mlflow
        import mlflow.entities
        import mlflow.exceptions
        import mlflow.tracking
    except ImportError:
        raise ConfigError(INSTALL) from None
    return mlflow


def tracking_uri_for(tracking_uri: str | None, run_dir: Path) -> str:
    """null: $MLFLOW_TRACKING_URI, else the SQLite file beside the run folder; a plain `.db` path means that
    SQLite file; anything else is MLflow's own URI and is used as given."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if tracking_uri is None:
        return "sqlite:///" + (run_dir.resolve().parent / STORE_FILE).as_posix()
    if "://" not in tracking_uri and tracking_uri.endswith(".db"):
        return "sqlite:///" + Path(tracking_uri).expanduser().resolve().as_posix()
    return tracking_uri


def artifact_location_for(artifact_location: str | None, tracking_uri: str, experiment: str) -> str | None:
    """A new experiment's artifact root: as given (a path becomes a file URI), else mlartifacts/<experiment>/
    beside an SQLite file (MLflow's own default would be ./mlruns in the current directory), else the
    store's default (a tracking server's)."""
    if artifact_location and "://" in artifact_location:
        return artifact_location
    if artifact_location:
        return Path(artifact_location).expanduser().resolve().as_uri()
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
        return (database.resolve().parent / ARTIFACTS / mlflow_key(experiment).replace("/", "_")).as_uri()
    return None


def default_experiment(config: Mapping[str, Any]) -> str:
    """seg-<dataset>: the dataset class's name, as its config file is named (PH2Data -> seg-ph2)."""
    target = str((config.get("dataset") or {}).get("_target_") or "")
    name = target.rsplit(".", 1)[-1].removesuffix("Data").lower()
    return f"seg-{name}" if name else "seg"


def mlflow_key(name: str) -> str:
    """A metric, param or tag name MLflow accepts on every system: letters, digits, _ - . space and /, as a
    relative path with no empty, `.` or `..` part (`dice_left lung` stays, `dice_a+b` becomes `dice_a_b`)."""
    parts = re.sub(r"[^/\w.\- ]", "_", name).split("/")
    return "/".join(p if p not in (".", "..") else p.replace(".", "_") for p in parts if p)[:MAX_KEY] or "_"


class MLflowLogger:
    """An MLflow run fed by seg.logger.build.Loggers: scalars are buffered and sent at flush (once per
    epoch), so the step loop never waits on the store. Failures to log after the start warn and training
    goes on; a store that cannot be opened at the start is a ConfigError."""

    def __init__(
        self, *, run_dir: str | Path, config: Mapping[str, Any], overrides: Sequence[str] = (), resuming: bool = False,
        tracking_uri: str | None = None, experiment_name: str | None = None, run_name: str | None = None,
        log_checkpoint: bool = True, artifact_location: str | None = None,
    ) -> None:  # fmt: skip
        mlflow = _mlflow()
        self._entities = mlflow.entities
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri_for(tracking_uri, self.run_dir)
        self.log_checkpoint = bool(log_checkpoint)
        self._pending: list[Any] = []  # Metric entities since the last flush
        self._ended, self._warned = False, False
        experiment = experiment_name or default_experiment(config)
        # A tracking server that does not answer: a few seconds and one line, not urllib3's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            with _store_lock(self.tracking_uri):  # parallel sweep jobs: one creates a new store's tables
                self.client = mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
                location = artifact_location_for(artifact_location, self.tracking_uri, experiment)
                experiment_id = self._experiment(experiment, location)
                self.run_id = self._open_run(experiment_id, run_name or self.run_dir.name, resuming, overrides)
            self._log_params(run_hparams(config, overrides))
            self.client.log_dict(self.run_id, dict(config), "config.yaml")
        except Exception as exc:  # MLflow's, SQLAlchemy's or the network's: one line, where to look
            if hasattr(self, "run_id"):  # opened, then failed: not left RUNNING
                self._end("failed")
            if isinstance(exc, ConfigError):
                raise
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ConfigError(f"logger=mlflow could not use the tracking store {self.tracking_uri}: {reason[:300]}; "
                              "check logger.tracking_uri (null: an SQLite file beside the run folder)") from None
        log.info("MLflow: run %s of experiment %s in %s", self.run_id, experiment, self.tracking_uri)

    def _experiment(self, name: str, location: str | None) -> str:
        """The experiment's id, created with `location` for its artifacts if it is new."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except Exception:  # a sweep's parallel job created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise ConfigError(f"MLflow experiment {name!r} in {self.tracking_uri} is deleted: restore it (mlflow "
                              f"experiments restore --experiment-id {found.experiment_id}) or choose another "
                              "logger.experiment_name")
        if location is not None and found.artifact_location != location:  # fixed when the experiment was made
            log.warning("MLflow: experiment %r keeps its artifacts in %s, not %s", name, found.artifact_location,
                        location)
        return found.experiment_id

    def _open_run(self, experiment: str, run_name: str, resuming: bool, overrides: Sequence[str]) -> str:
        """The run a resume continues (its id in <run>/mlflow_run_id), else a new one, recorded there."""
        record = self.run_dir / RUN_ID_FILE
        if resuming and record.is_file():
            run_id = record.read_text().strip()
            try:
                active = self.client.get_run(run_id).info.lifecycle_stage == "active"
            except Exception:  # not in this store
                active = False
            if active:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            log.warning("MLflow: the run this one logged to (%s, in %s) is not in %s or was deleted; this resume "
                        "logs to a new MLflow run", run_id, record, self.tracking_uri)
        tags = {"seg.run_dir": str(self.run_dir.resolve()), "seg.overrides": " ".join(overrides)[:MAX_VALUE],
                "mlflow.source.name": "seg-train"}
        run_id = self.client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
        record.write_text(run_id + "\n")
        return run_id

    def _log_params(self, params: Mapping[str, Any]) -> None:
        """Params are fixed once logged: a resume logs the new keys, and a changed value as a tag
        `resumed/<key>` (e.g. trainer.epochs raised to train longer)."""
        stored = self.client.get_run(self.run_id).data.params
        values = {mlflow_key(k): str(v)[:MAX_VALUE] for k, v in params.items()}
        new = [self._entities.Param(k, v) for k, v in values.items() if k not in stored]
        changed = [self._entities.RunTag(mlflow_key(f"resumed/{k}"), v) for k, v in values.items()
                   if k in stored and stored[k] != v]
        for i in range(0, max(len(new), len(changed)), BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + BATCH], tags=changed[i : i + BATCH])

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending += [self._entities.Metric(mlflow_key(k), float(v), now, int(step)) for k, v in values.items()]

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The params went in at the start; the best metrics are scalars here as in TensorBoard."""
        self.scalars(metrics, step)

    def flush(self) -> None:
        """Send the buffered scalars in one batch. After a failure the store is left alone for the rest of
        the run (each call to a server that went away would wait for its timeout): one warning."""
        if not self._pending or self._warned:
            return
        try:
            for i in range(0, len(self._pending), 10 * BATCH):
                self.client.log_batch(self.run_id, metrics=self._pending[i : i + 10 * BATCH])
        except Exception as exc:
            self._warn("could not log metrics", exc)
            return
        self._pending.clear()

    def finish(self, status: str, best_checkpoint: str | Path | None = None) -> None:
        """End the run with seg's status (finished, stopped, pruned, failed), uploading the best checkpoint
        first (as checkpoints/best.pt) unless log_checkpoint is false."""
        if self._ended:
            return
        self.flush()
        best = Path(best_checkpoint) if best_checkpoint is not None else None
        if self.log_checkpoint and best is not None and best.is_file() and not self._warned:
            try:
                self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")
            except Exception as exc:
                self._warn(f"could not upload {best}", exc)
        self._end(status)

    def close(self) -> None:
        """A run closed without finish() ended by an exception (diverged, crashed): FAILED."""
        if not self._ended:
            self.flush()
            self._end("failed")

    def _end(self, status: str) -> None:
        self._ended = True
        if self._warned:
            return
        try:
            self.client.set_tag(self.run_id, "seg.status", status)
            self.client.set_terminated(self.run_id, STATUSES.get(status, "FAILED"))
        except Exception as exc:
            self._warn("could not record the run's end", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        if not self._warned:  # once: a store that went away would otherwise warn every epoch
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            log.warning("MLflow: %s (%s) in %s; training goes on, TensorBoard has everything", what, reason[:200],
                        self.tracking_uri)
        self._warned = True


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside an SQLite store while a run opens it: jobs of a parallel sweep that open
    a new store at once would race in creating its tables (Alembic's migrations), and one would fail."""
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    lock = db.with_name(db.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

