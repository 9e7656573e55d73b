"""Hydra's own reports of a bad command line (an unknown key or group option, a value of the wrong
type, bad override syntax) take 7-13 lines and exit 1; here they become one line and exit 2, like
every other seg user error."""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

FULL_ERROR = "HYDRA_FULL_ERROR"
# Lines of Hydra/OmegaConf messages that only repeat what the message says, or point at Hydra internals.
_NOISE = ("full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR")


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
        from seg.cli.common import fail  # seg.cli.common imports this module

        fail(prog, f"{describe_hydra_error(exc)} (see `{prog} --help`)")
    except OSError as exc:  # Hydra creating the run folder (hydra.run.dir is a file, not writable)
        from seg.cli.common import describe_os_error, fail

        fail(prog, describe_os_error(exc))
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
