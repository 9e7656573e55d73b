"""Following a training process by its validations: the target, each loop's outcome, and readers of
the records a run writes as it goes (seg-train's TensorBoard events, the reference loop's JSON lines).
Every record carries the wall-clock time it was written, so a poll's delay never enters a time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from seg.errors import ConfigError, SegError

POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 120.0  # a SIGTERMed seg-train finishes its step and writes last.pt first
_TARGET = re.compile(r"^\s*(val/[\w.-]+)\s*(>=|<=|=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Target:
    metric: str
    value: float
    mode: str  # "max": reached at >= value; "min": at <= value

    def reached(self, value: float) -> bool:
        return value >= self.value if self.mode == "max" else value <= self.value

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.mode == 'max' else '<='} {self.value:g}"


def parse_target(text: str) -> Target:
    """`val/dice=0.9` (>=; a loss: <=), or explicitly `val/dice>=0.9`, `val/loss<=0.3`."""
    match = _TARGET.match(text)
    if match is None:
        raise ConfigError(f"--to-quality {text!r}: expected METRIC=VALUE with a validation metric, e.g. "
                          "val/dice=0.9 (reached at >=), val/loss<=0.3")
    metric, op, value = match.groups()
    mode = {">=": "max", "<=": "min"}.get(op, "min" if metric.endswith("loss") else "max")
    return Target(metric, float(value), mode)


@dataclass
class Outcome:
    """One loop's search for the target: the first validation that reached it, or how far it got."""

    reached: bool = False
    seconds: float | None = None  # process start -> the validation that reached the target
    epochs: int | None = None  # that validation's epoch; the last validated epoch when not reached
    value: float | None = None  # the metric there
    best: float | None = None
    stopped_by: str = ""  # target | max_seconds | run_ended (trainer.epochs ran out, or early stopping)
    searched_seconds: float = 0.0  # process start -> the moment the search stopped
    wall_seconds: float = 0.0  # process start -> its exit
    exit_code: int | None = None
    load_average: list[float | None] = field(default_factory=list)  # 1-minute load at its start and end
    curve: list[dict[str, float]] = field(default_factory=list)  # epoch, seconds, value per validation

    def add(self, epoch: int, seconds: float, value: float, target: Target, max_seconds: float | None) -> None:
        self.curve.append({"epoch": epoch, "seconds": seconds, "value": value})
        better = self.best is None or (value > self.best if target.mode == "max" else value < self.best)
        self.best = value if better else self.best
        if not self.reached:
            self.epochs = epoch
            if target.reached(value) and (max_seconds is None or seconds <= max_seconds):
                self.reached, self.seconds, self.value = True, seconds, value


class TensorBoardTail:
    """New values of one scalar tag in a run's `tb/` events file, read as it grows."""

    def __init__(self, folder: Path, tag: str) -> None:
        self.folder, self.tag, self._loader = folder, tag, None

    def read(self) -> list[tuple[int, float, float]]:
        if self._loader is None:
            files = sorted(self.folder.glob("events.out.tfevents.*"))
            if not files:
                return []
            from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

            self._loader = EventFileLoader(str(files[-1]))  # a partly written record is read next time
        from tensorboard.util.tensor_util import make_ndarray

        out = []
        for event in self._loader.Load():
            for value in event.summary.value:
                if value.tag == self.tag:
                    number = make_ndarray(value.tensor).item() if value.HasField("tensor") else value.simple_value
                    out.append((int(event.step), float(event.wall_time), float(number)))
        return out


class JsonLinesTail:
    """New complete lines of the reference loop's per-epoch JSON lines."""

    def __init__(self, path: Path, metric: str) -> None:
        self.path, self.metric, self._offset = path, metric, 0

    def read(self) -> list[tuple[int, float, float]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        rows = [json.loads(line) for line in complete.splitlines() if line.strip()]
        return [(int(r["epoch"]), float(r["time"]), float(r["metrics"][self.metric])) for r in rows]


def watch(name: str, command: list[str], reader: TensorBoardTail | JsonLinesTail, *, target: Target, work: Path,
          env: dict[str, str], max_seconds: float | None) -> Outcome:
    """Start `command` in `work`, follow its validations through `reader` until the target, the time
    limit or the process's own end, then stop it. A process that fails on its own is an error."""
    log_path = work / f"{name}.log"
    outcome = Outcome()
    with log_path.open("w") as log:
        outcome.load_average.append(_load())
        started = time.time()  # the wall clock the events are stamped with
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                exited = proc.poll() is not None
                for epoch, stamp, value in reader.read():
                    outcome.add(epoch, stamp - started, value, target, max_seconds)
                late = max_seconds is not None and time.time() - started > max_seconds
                if outcome.reached or exited or late:
                    outcome.stopped_by = "target" if outcome.reached else "max_seconds" if late else "run_ended"
                    break
                time.sleep(POLL_SECONDS)
            outcome.searched_seconds = time.time() - started
        finally:
            outcome.exit_code = _stop(proc)
        outcome.wall_seconds = time.time() - started
        outcome.load_average.append(_load())
    if outcome.stopped_by == "run_ended" and outcome.exit_code != 0:
        raise SegError(f"{name} failed (exit {outcome.exit_code}) before reaching {target}: {_last_line(log_path)}")
    if outcome.stopped_by == "run_ended" and not outcome.curve:  # "not reached" would be a wrong answer
        raise SegError(f"{name} ended without a validation of {target.metric} that the benchmark could read "
                       f"(its last output: {_last_line(log_path)})")
    return outcome


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
    return int(proc.wait())


def _load() -> float | None:
    """The 1-minute load average: on a shared machine, what else ran beside the timed process."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
