"""Checkpoints: written atomically, loaded safely (weights_only), with their provenance.

A checkpoint is a plain dict (see `make_checkpoint`) that `torch.load(..., weights_only=True)` can read:
tensors, numbers, strings and containers only. Its `model` is the state_dict that seg-eval, seg-predict
and seg-export run: with `trainer.ema_decay` the moving average, the raw weights then in `train_model`
and the average's update count in `ema_steps` (`ema_state`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import seg
from seg.data.io import share_like_umask
from seg.errors import CheckpointError
from seg.provenance import code_version

REQUIRED_KEYS = ("model", "config", "epoch")


def versions() -> dict[str, str]:
    return {"seg": seg.__version__, "torch": str(torch.__version__), "python": platform.python_version()}


def make_checkpoint(*, provenance: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Add provenance (command line, time, versions, the code's git commit, and the `provenance` the
    caller knows: the data fingerprint and split hash, see seg/provenance.py) to the training state."""
    return {
        **fields,
        "argv": list(sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "provenance": {"code": code_version(), **(provenance or {})},
    }


def ema_state(ckpt: dict[str, Any], path: str | Path) -> tuple[dict[str, Any] | None, int]:
    """(train_model, ema_steps) of a checkpoint trained with an EMA, or (None, 0) without one. Checked,
    as a crafted file may hold anything under these keys: the weights a mapping (load_model_state then
    checks their names and shapes), the count an integer >= 0."""
    raw, updates = ckpt.get("train_model"), ckpt.get("ema_steps")
    if raw is None and updates is None:
        return None, 0
    if not isinstance(raw, dict) or isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise CheckpointError(f"{path}: its EMA state is damaged (expected train_model to hold weights and "
                              f"ema_steps a count >= 0, got a {type(raw).__name__} and {str(updates)[:40]!r}); "
                              "resume from a checkpoint seg-train wrote")
    return raw, updates


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, named `.{name}.<8 random characters>.tmp` (what
    `remove_partial_writes` recognises)."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _named(exc: OSError, path: Path) -> OSError:
    """torch.save and fsync report a full disk as a bare `[Errno 28] No space left on device`: name the
    checkpoint being written, so the one-line error says which file and where (describe_os_error)."""
    if exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    return exc


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, str]]:
    """A temporary file beside `path` (its descriptor and name) that the body fills and renames onto
    `path`; on any failure it goes, and a bare OSError (a full disk) names `path`."""
    fd, tmp = _temporary(path)
    try:
        yield fd, tmp
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        named = _named(exc, path)
        if named is exc:
            raise
        raise named from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: a crash or a full disk never
    leaves a truncated file under the final name, and an existing checkpoint stays intact until the new
    one is complete. A SIGKILL in the middle leaves only the temporary file, which the run's next start
    removes (`remove_partial_writes`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as (fd, tmp):
        share_like_umask(Path(tmp))
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def publish_copy(source: str | Path, path: str | Path) -> Path:
    """Make `path` hold exactly the checkpoint `source` holds, atomically (a temporary name, then a
    rename, as save_checkpoint does): a hard link where the file system has them, which writes no bytes,
    else a copy. fit uses it for best.pt, which is the last.pt just written with the same state."""
    source, path = Path(source), Path(path)
    with _replacing(path) as (fd, tmp):
        os.close(fd)
        os.unlink(tmp)  # os.link needs a free name: the random one mkstemp just reserved
        try:
            os.link(source, tmp)
        except OSError:  # FAT, some network and FUSE file systems: no hard links
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable, in order: without it a power cut may undo a rename, or keep a later one
    (best.pt) and lose an earlier one (last.pt). Some file systems refuse to fsync a folder: then skip."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


PARTIAL_WRITE = re.compile(r"\.(last|best)\.pt\.[a-z0-9_]{8}\.tmp")  # _temporary's names for seg-train's files


def remove_partial_writes(folder: str | Path) -> list[str]:
    """Delete the temporary files of checkpoint writes that a SIGKILL or power cut stopped half-way (the
    renamed checkpoints never are: a write replaces them only when complete). Only save_checkpoint's
    own names for last.pt and best.pt match; anything else in the folder is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if PARTIAL_WRITE.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load with weights_only=True (no arbitrary code runs) and check it is a seg checkpoint.
    `mmap`: map the tensors instead of reading them, for a look at the config and keys only."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a folder: pass the .pt file, e.g. checkpoints/best.pt)" if path.is_dir() else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    damage = _damage(path)
    if damage is not None:
        raise CheckpointError(f"{path} is damaged ({damage}); copy it again from the run that wrote it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(f"{path} is not a readable seg checkpoint: {_diagnose(path, exc)}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        kind = f"a dict with keys {sorted(state)[:8]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a seg checkpoint: it holds {kind}, missing {missing}. "
            "Expected a file written by seg-train (checkpoints/best.pt or last.pt)."
        )
    return state


def _damage(path: Path) -> str | None:
    """What is wrong with a zip archive whose member bytes do not match their stored CRC-32s, or None.

    torch.load does not check them: 64 random bytes inside a tensor loaded silently (a loss of 3e29).
    Reading every member once costs 0.04 s for a 120 MB checkpoint in the page cache (0.06 s for the
    load itself; docs/robustness.md). Files that are not readable zip archives give None here: torch.load
    fails on them, and _diagnose says why."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as member:
                        while member.read(1 << 20):
                            pass
                except zipfile.BadZipFile as exc:
                    kind = "CRC mismatch" if "CRC" in str(exc) else f"bad entry: {exc}"
                    return f"{kind} in member {info.filename}"
    # RuntimeError also covers the "not implemented" error a member of a compressed zipfile raises
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return None
    return None


def load_model_state(model: torch.nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """Strict load with a message that names the differing keys, not torch's wall of text."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state_dict.keys()
        if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"shape mismatch e.g. {shapes[:3]}")
        raise CheckpointError(
            f"the weights in {source} do not fit the model built from its config: {'; '.join(parts)}. "
            "Do not override model.* or dataset channel/class settings when loading this checkpoint."
        )
    model.load_state_dict(state_dict)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (since torch 1.6)
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format, and plain pickles, start with a protocol marker
EXPECTED = "expected a .pt file written by seg-train (checkpoints/best.pt or last.pt in a run directory)"


def _diagnose(path: Path, exc: Exception) -> str:
    """Why torch could not read `path`, from the file's own bytes: torch's messages for a text file
    ("101") or a truncated archive (a paragraph about miniz) do not tell the user what to do."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err}); check its permissions"
    damaged = f"it is truncated or damaged ({size} bytes); copy it again from the run that wrote it"
    if size == 0:
        return "it is empty (0 bytes); copy it again from the run that wrote it"
    if head.startswith(ZIP_MAGIC):
        names = _zip_names(path)
        if names is None:
            return damaged
        if not any(name.endswith("/data.pkl") for name in names):
            return f"a zip archive, but not one torch.save wrote ({_reason(exc)}); {EXPECTED}"
        return f"{_reason(exc)}; {EXPECTED}"
    if head.startswith(PICKLE_MAGIC):  # a legacy torch file or a plain pickle
        if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
            return damaged
        return f"{_reason(exc)}; {EXPECTED}"
    return f"not a zip archive written by torch.save (it starts with {head[:12]!r}); {EXPECTED}"


def _zip_names(path: Path) -> list[str] | None:
    """The members of a zip archive, or None when its directory is missing or a member's CRC fails."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist() if archive.testzip() is None else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


# Sentences of torch's load errors that advise loading unsafely (re-run with weights_only=False, allowlist
# the globals "if you trust" the file): never shown, since a file that needs them may run code.
UNSAFE_ADVICE = ("weights_only", "trust", "arbitrary code", "safe_globals(", "weights only load failed")


def _facts(text: str) -> list[str]:
    """The sentences of `text` that state what is wrong, without torch's advice to load unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # torch bolds its warning with terminal escapes
    sentences = (s.strip(" .\t") for line in text.splitlines() for s in re.split(r"(?<=\.)\s+", line))
    return [s for s in sentences if s and not any(a in s.lower() for a in UNSAFE_ADVICE)]


def _reason(exc: Exception) -> str:
    """The informative line of torch's (long, multi-paragraph) load error."""
    text = str(exc)
    if "WeightsUnpickler error:" in text or "Weights only load failed" in text:
        facts = _facts(text.split("WeightsUnpickler error:", 1)[-1])
        return f"it holds Python objects that a safe load refuses: {facts[0] if facts else 'unsupported content'}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", lines[0]) if lines else ""
    facts = _facts(first)
    return facts[0] if facts else type(exc).__name__
