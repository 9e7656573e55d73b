"""Which files each case is decoded from, with their size and modification time.

The decoded-array cache records these per row, so a source replaced or truncated after the first run
is decoded again instead of being served from stale arrays; the same stats give the dataset's
fingerprint for provenance. Gathering them costs one `os.stat` per file per run start (a few
microseconds each), never a read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

Stat = tuple[int, int] | None  # (st_size, st_mtime_ns); None: missing or not stat-able


def path_key(path: str | Path) -> str:
    """The absolute path a source is recorded under (os.path.abspath costs ~3 us, so only when needed:
    readers build absolute paths from an expanded root)."""
    key = os.fspath(path)
    return key if os.path.isabs(key) else os.path.abspath(key)


def stat_file(path: str | Path) -> Stat:
    try:
        st = os.stat(path)
    except OSError:  # vanished or unreadable: recorded as such, so the row is not trusted
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class SourceStats:
    """Unique source files (absolute paths) with their stats, and which of them each case reads."""

    files: list[str]
    stats: list[Stat]
    cases: dict[str, list[int]]  # case id -> indices into files

    @classmethod
    def collect(
        cls,
        ids: Sequence[str],
        case_sources: Callable[[str], Iterable[str | Path]],
        extra: Iterable[str | Path] = (),
    ) -> SourceStats:
        """Stat every file of every case once (a file shared by many cases, e.g. a label CSV or a
        TIFF stack, is stat'ed once). `extra` files belong to no case but to the fingerprint."""
        index: dict[str, int] = {}
        files: list[str] = []

        def add(path: str | Path) -> int:
            key = path_key(path)
            if key not in index:
                index[key] = len(files)
                files.append(key)
            return index[key]

        cases = {case: [add(p) for p in case_sources(case)] for case in ids}
        for path in extra:
            add(path)
        return cls(files, [stat_file(f) for f in files], cases)

    @cached_property
    def relative(self) -> list[str]:
        """Each file relative to the folder all sources share, '/'-separated: what the cache records and
        the fingerprint hashes, so the same files reached through another spelling of the root (a
        symlink, PH2's three accepted root forms) match."""
        if not self.files:
            return []
        base = os.path.commonpath([os.path.dirname(f) for f in self.files])
        prefix = base.rstrip(os.sep) + os.sep
        return [f[len(prefix):].replace(os.sep, "/") for f in self.files]

    def record(self, i: int) -> list[Any]:
        """[relative path, size, mtime_ns] of file i, as the cache stores it (None, None when missing)."""
        return [self.relative[i], *(self.stats[i] or (None, None))]

    def signature(self, case: str) -> list[list[Any]]:
        return [self.record(i) for i in self.cases.get(case, [])]

    def table(self, ids: Sequence[str]) -> tuple[list[list[Any]], list[list[int]]]:
        """(every file's record, per row of `ids` the indices of its files): compact for 10^4 cases."""
        return [self.record(i) for i in range(len(self.files))], [self.cases.get(c, []) for c in ids]

    def fingerprint(self) -> dict[str, Any] | None:
        """{"files": count, "sha256": hex digest of the JSON list of [relative path, size, mtime_ns]
        sorted by path, -1 for a missing file's size and time}; None when no file is known (generated
        data)."""
        if not self.files:
            return None
        entries = sorted([rel, *(s if s is not None else (-1, -1))] for rel, s in zip(self.relative, self.stats))
        blob = json.dumps(entries, separators=(",", ":"))
        return {"files": len(entries), "sha256": hashlib.sha256(blob.encode()).hexdigest()}
