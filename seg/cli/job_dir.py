"""A sweep job's folder name: its number, then the overrides it ran, e.g. `3_loss=bce,model=segnet`.

Bare numbers (Hydra's default `hydra.sweep.subdir`) say nothing in a file browser or in TensorBoard's
run list. Hydra's `hydra.job.override_dirname` says it all, but may hold characters a file system
refuses (a path's `/`, Windows' `:*?"<>|`) and grow past name limits (255 bytes on most file systems,
260 characters for a whole Windows path), so it is cleaned and shortened here. The number in front keeps
names unique within a sweep, and the same command (a resumed sweep) gives the same names:
`resume` and `run_dir` are left out of the name in configs/train.yaml.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

RESOLVER = "seg_job_dir"
MAX_NAME = 80  # characters of overrides kept before a hash stands in for the rest
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]+")  # the rest is legal on Linux, macOS and Windows alike


def job_dir_name(num: int | str, overrides: str = "") -> str:
    """`<num>` or `<num>_<cleaned overrides>`; a name cut short ends with 8 hex digits of the full
    overrides' SHA-1, so two long combinations never share a folder name."""
    cleaned = _UNSAFE.sub("_", str(overrides)).strip("._")
    if len(cleaned) > MAX_NAME:
        digest = hashlib.sha1(str(overrides).encode()).hexdigest()[:8]
        cleaned = f"{cleaned[:MAX_NAME - 9].rstrip('._')}-{digest}"
    return f"{num}_{cleaned}" if cleaned else str(num)


def register() -> None:
    """`${seg_job_dir:${hydra.job.num},${hydra.job.override_dirname}}` in configs/train.yaml."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_dir_name)
