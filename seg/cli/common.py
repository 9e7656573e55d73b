"""What every entry point shares: where the configs are, and how user errors are reported."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

import seg.config  # noqa: F401  (registers schemas and resolvers before Hydra composes)
from seg.errors import SegError

log = logging.getLogger("seg")

EXIT_USER_ERROR = 2


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
    except SegError as exc:
        _fail(prog, str(exc))
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "a value"
        _fail(prog, f"missing required config value {key}: set it on the command line, e.g. {key}=...")
    except OmegaConfBaseException as exc:
        _fail(prog, f"invalid configuration: {str(exc).splitlines()[0]}")


def _fail(prog: str, message: str) -> None:
    logging.shutdown()
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)
