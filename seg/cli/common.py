"""What every entry point shares: where the configs are, and how user errors are reported."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

import seg.config  # noqa: F401  (registers schemas and resolvers before Hydra composes)
from seg.errors import EXIT_USER_ERROR, SegError

log = logging.getLogger("seg")

FULL_ERROR = "HYDRA_FULL_ERROR"
# Lines of Hydra/OmegaConf messages that only repeat what the message says, or point at Hydra internals.
_NOISE = ("full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR")


def config_dir() -> Path:
    """Installed wheel: seg/configs; source checkout or editable install: <repo>/configs."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise SystemExit(f"seg: cannot find the configs folder next to {package}; reinstall seg")


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


@contextlib.contextmanager
def hydra_errors(prog: str) -> Iterator[None]:
    """Wrap the call of a @hydra.main function: Hydra's own reports of a bad command line (an unknown
    key or group option, a value of the wrong type, bad override syntax) take 7-13 lines and exit 1;
    here they become one line and exit 2, like every other user error.

    HYDRA_FULL_ERROR=1 makes Hydra re-raise instead of printing, so the exception reaches us; any other
    exception (a bug) keeps its full traceback. A user who sets HYDRA_FULL_ERROR=1 gets Hydra's
    traceback for its own errors too.
    """
    previous = os.environ.get(FULL_ERROR)
    os.environ.setdefault(FULL_ERROR, "1")
    try:
        yield
    except (HydraException, OmegaConfBaseException) as exc:
        if previous == "1":
            raise
        _fail(prog, f"{describe_hydra_error(exc)} (see `{prog} --help`)")
    except OSError as exc:  # Hydra creating the run folder (hydra.run.dir is a file, not writable)
        _fail(prog, describe_os_error(exc))
    finally:
        if previous is None:
            os.environ.pop(FULL_ERROR, None)


def describe_hydra_error(exc: BaseException) -> str:
    """One line from a Hydra exception and the OmegaConf error it wraps, without the bookkeeping lines."""
    cause = exc.__cause__
    own = _lines(str(exc))
    extra = ""
    override = getattr(exc, "override", None)
    if isinstance(exc, OverrideParseException) and override and own and override not in own[0]:
        own[0] = f"cannot parse override {override!r}: {own[0]}"  # Hydra names only the bad token
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")  # model/unett: a mistyped group option
        match = difflib.get_close_matches(name, [str(o) for o in exc.options], n=1, cutoff=0.6)
        extra = f" (did you mean {group}={match[0]}?)" if group and match else ""
    elif isinstance(cause, (ConfigAttributeError, ConfigKeyError)):  # an unknown key: name the closest one
        match_key = _closest_key(cause)
        if match_key:
            own = [line for line in own if not line.startswith("To append to your config use")]
            extra = f" (did you mean {match_key}?)"
    reason = _join(_lines(str(cause))) if cause is not None else ""
    if reason and own:  # "Could not override 'x': <why>; To append ..." reads in order
        own[0] = f"{own[0].rstrip('.')}: {reason.rstrip('.')}"
    elif reason:
        own = [reason]
    return (_join(own) + extra) or type(exc).__name__


def _lines(text: str) -> list[str]:
    """Drop bookkeeping lines, and Hydra's config search path listing (provider=... lines)."""
    out: list[str] = []
    skipping = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            skipping = True
            continue
        if skipping and raw.startswith(("\t", " ")):
            continue
        skipping = False
        if line and not line.startswith(_NOISE):
            out.append(line)
    return _fold_options(out)


def _fold_options(lines: list[str]) -> list[str]:
    """Hydra lists group options one per (tab-indented, here already stripped) line after a header
    ending in ':'; put them on the header's line. Only for 'Available options' headers."""
    out: list[str] = []
    collecting = False
    for line in lines:
        if line.startswith("Available options") and line.endswith(":"):
            out.append(line)
            collecting = True
        elif collecting and " " not in line:
            out[-1] += (" " if out[-1].endswith(":") else ", ") + line
        else:
            collecting = False
            out.append(line)
    return out


def _join(lines: list[str]) -> str:
    text = ""
    for line in lines:
        if text:
            text += " " if text.endswith((".", ":", ";", "!", "?")) else "; "
        text += line
    return text


def _closest_key(cause: OmegaConfBaseException) -> str | None:
    """The existing key nearest to the mistyped one, as a full key (trainer.epochs), or None."""
    key, full_key, parent = getattr(cause, "key", None), getattr(cause, "full_key", None), cause.parent_node
    if not isinstance(key, str) or parent is None or not hasattr(parent, "keys"):
        return None
    candidates = [str(k) for k in parent.keys() if str(k) != "hydra"]
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        return None
    prefix = full_key.rpartition(".")[0] if isinstance(full_key, str) else ""
    return f"{prefix}.{match[0]}" if prefix else match[0]


def _fail(prog: str, message: str) -> None:
    logging.shutdown()
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


fail = _fail  # the public name, for callers outside this module (seg.cli.callbacks)
