"""What every entry point shares: where the configs are, and how user errors are reported."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

import seg.config  # noqa: F401  (registers schemas and resolvers before Hydra composes)
from seg.cli.hydra_messages import describe_hydra_error, hydra_errors
from seg.errors import EXIT_USER_ERROR, SegError
from seg.overrides import PATH_KEYS, quote_paths
from seg.stored import config_dir

log = logging.getLogger("seg")



@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """A mistake the user can fix becomes one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        _fail(prog, message)


def user_message(exc: BaseException) -> str | None:
    """The one line to show for a mistake the user can fix, or None for a bug (keep its traceback)."""
    if isinstance(exc, SegError):
        return str(exc)
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", "") or "a value"
        return f"missing required config value {key}: set it on the command line, e.g. {key}=..."
    if isinstance(exc, OmegaConfBaseException):
        return f"invalid configuration: {str(exc).splitlines()[0]}"
    if isinstance(exc, OSError):  # a path that cannot be written or read: the file system's own words
        return describe_os_error(exc)
    return None


def describe_os_error(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    # A full disk or quota is not a wrong path: say so, and that what was written before is still there
    # (checkpoints go to a temporary file first, so the earlier last.pt/best.pt stay whole).
    full = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}.get(exc.errno or 0)
    if full:
        writing = f" while writing {exc.filename}" if exc.filename else ""
        return (f"{full} ({exc.strerror or exc}){writing}; files written before are kept. Free some space "
                "there (or write to another disk), then run the command again (seg-train: resume=auto)")
    hint = "check that the path exists, is a folder where one is expected and is writable"
    return f"{exc.strerror or exc}{where} ({hint})"


@contextlib.contextmanager
def command(prog: str) -> Iterator[None]:
    """What every seg entry point runs inside: signals end in one line (`interrupts`), Hydra's and
    seg's user errors too (`hydra_errors`, `user_errors`). torch's own INFO records (the FakeTensor
    cache statistics it logs at exit once torch.compile was imported) would reach Hydra's INFO root
    logger after a stop: they stay off unless the user asks for them with TORCH_LOGS."""
    if not os.environ.get("TORCH_LOGS"):
        logging.getLogger("torch").setLevel(logging.WARNING)
    sys.argv[1:] = quote_paths(sys.argv[1:], PATH_KEYS.get(prog, ()))  # sweep job folders hold `=` and `,`
    with interrupts(prog), user_errors(prog), hydra_errors(prog):
        yield


@contextlib.contextmanager
def interrupts(prog: str) -> Iterator[None]:
    """SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so temporary files are cleaned up; either
    ends in one line and exit code 128 + signal, not a traceback. Training installs its own graceful
    handler on top (save, then stop) while it runs."""
    received = {"signal": signal.SIGINT}

    def terminate(signum: int, frame: Any) -> None:
        received["signal"] = signal.Signals(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield
    except KeyboardInterrupt:
        logging.shutdown()
        name = received["signal"].name
        print(f"{prog}: stopped by {name}; files already written (checkpoints, masks, reports) are kept",
              file=sys.stderr)
        raise SystemExit(128 + received["signal"].value) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _fail(prog: str, message: str) -> None:
    logging.shutdown()
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


fail = _fail  # the public name, for callers outside this module (seg.cli.callbacks, hydra_messages)

__all__ = ["command", "config_dir", "describe_hydra_error", "describe_os_error", "fail", "hydra_errors",
           "interrupts", "user_errors", "user_message"]
