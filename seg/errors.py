"""Errors a user can cause. The CLI prints their message and exits non-zero, without a traceback."""

import argparse
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2  # the exit status of every seg command for a user error (argparse uses 2 as well)


class SegError(Exception):
    """Base class: the message must say what was expected and what to do."""


class DatasetError(SegError):
    """Missing root, wrong layout, unreadable or corrupt file, malformed CSV."""


class CheckpointError(SegError):
    """A path that is not a seg checkpoint, or one that does not fit the model."""


class ConfigError(SegError):
    """A configuration value that composes but makes no sense (e.g. unknown split)."""


class TrainingDiverged(SegError):
    """A non-finite loss, gradient or weight: the run stops before saving it, keeping the last finite
    checkpoints. `epoch` and `step` (1-based, within the epoch; None for weights checked after it) say where."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line like every other seg error: one line, exit 2 (plain
    argparse prints its usage block first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
