"""Where a checkpoint came from: the code that trained it, the data and the split it was trained on.

Every checkpoint carries `provenance` = {"code": code_version(), "data": <the data module's
source_fingerprint(), None for generated data>, "split_sha256": split_sha256(split)}; a resume (and
seg-eval) compare it with what they have now through `provenance_differences`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import seg

GIT_TIMEOUT_S = 5.0  # `git status` on a large or network checkout can be slow: never hold training up longer


def _git(folder: Path, *args: str) -> str | None:
    """A git command's output, or None for any failure (no git, not a checkout, a foreign owner, slow)."""
    # GIT_OPTIONAL_LOCKS=0: `git status` then never takes the index lock, so it cannot disturb a commit
    # being made in the same checkout while training starts.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """seg's version and, when seg runs from its own git checkout (an editable install), the commit and
    whether the tree had uncommitted changes. Computed once per process (three git calls, tens of ms).

    An installed seg inside some other repository (a venv in a project folder) is not that repository's
    code: the checkout only counts when its top folder holds this package as `seg/`."""
    info: dict[str, Any] = {"version": seg.__version__, "git_commit": None, "git_dirty": None}
    package = Path(seg.__file__).resolve().parent
    top = _git(package, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package.parent:
        return info
    commit = _git(package, "rev-parse", "HEAD")
    status = _git(package.parent, "status", "--porcelain") if commit else None
    info["git_commit"] = commit
    info["git_dirty"] = None if status is None else bool(status)
    return info


def split_sha256(split: Mapping[str, Sequence[str]]) -> str:
    """SHA-256 of the split as split.json holds it: the bytes seg.data.split.write_split writes, so
    `sha256sum split.json` gives the same value (tests/train/test_checkpoint_safety.py checks they agree)."""
    text = json.dumps({k: list(v) for k, v in split.items()}, indent=1)
    return hashlib.sha256(text.encode()).hexdigest()


def _data_fingerprint(data: Any) -> dict[str, Any] | None:
    """A data module's fingerprint (asked of it), or an already computed one."""
    if data is None or isinstance(data, Mapping):
        return dict(data) if data is not None else None
    return getattr(data, "source_fingerprint", lambda: None)()


def provenance_differences(ckpt: Mapping[str, Any], data: Any, split: Mapping[str, Sequence[str]] | None) -> list[str]:
    """What differs between the data and split a checkpoint was trained on and the ones at hand, as
    short phrases for one warning line (empty: nothing differs, or nothing to compare).

    `ckpt`: a loaded checkpoint; `data`: the data module (its `source_fingerprint()` is asked, once) or
    a fingerprint dict, or None; `split`: {"train": [ids], "val": [...], "test": [...]} or None.
    Checkpoints written before provenance existed, and generated data (no fingerprint), compare as equal."""
    stored = ckpt.get("provenance") or {}
    found: list[str] = []
    then, now = stored.get("data"), _data_fingerprint(data)
    if isinstance(then, Mapping) and isinstance(now, Mapping) and then.get("sha256") != now.get("sha256"):
        found.append(f"the dataset's source files differ from those it was trained on ({then.get('files')} files, "
                     f"sha256 {str(then.get('sha256'))[:12]} then; {now.get('files')} files, "
                     f"sha256 {str(now.get('sha256'))[:12]} now)")
    if split is not None and stored.get("split_sha256") and stored["split_sha256"] != split_sha256(split):
        sizes = "/".join(str(len(split.get(k, []))) for k in ("train", "val", "test"))
        found.append(f"the train/val/test split differs from the one it was trained on (split sha256 "
                     f"{stored['split_sha256'][:12]} then, {split_sha256(split)[:12]} now with {sizes} cases)")
    return found
