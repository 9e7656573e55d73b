"""An output folder that seg-eval and seg-predict share with the user: seg replaces and removes only
files it wrote there itself.

Each folder keeps a record, `.seg-written.json`, of the files a seg command wrote into it with their
SHA-256. A file in the way that is not in the record, or that changed since seg wrote it, is the
user's: the command stops before writing anything (one line naming it) instead of overwriting it.
Files seg wrote before and no longer writes (an earlier run's overlays, whose names carry ranks and
scores) are removed; anything else in the folder is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from seg.errors import ConfigError

RECORD = ".seg-written.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputFolder:
    def __init__(self, folder: Path, command: str) -> None:
        self.folder, self.command = folder, command
        self.previous = self._read_record()
        self.written: dict[str, str] = {}

    def _read_record(self) -> dict[str, str]:
        try:
            record = json.loads((self.folder / RECORD).read_text())
        except (OSError, ValueError):
            return {}  # no record (or a damaged one): nothing in the folder counts as seg's
        files = record.get("files") if isinstance(record, dict) else None
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def ours(self, relative: str) -> bool:
        """Whether `relative` is a file seg wrote and nobody changed since."""
        path = self.folder / relative
        return relative in self.previous and path.is_file() and file_sha256(path) == self.previous[relative]

    def claim(self, relatives: Iterable[str]) -> None:
        """Refuse, before anything is written, to replace a file of the user's."""
        theirs = [r for r in relatives if (self.folder / r).exists() and not self.ours(r)]
        if theirs:
            shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            raise ConfigError(
                f"out_dir={self.folder} already holds {shown}, which {self.command} did not write (or which was "
                "changed since); it is kept. Choose another out_dir, or move those files away."
            )

    def remove_previous(self, under: str) -> int:
        """Remove the files seg wrote under `under/` before (and nobody changed since)."""
        stale = [r for r in self.previous if r.startswith(f"{under}/") and self.ours(r)]
        for relative in stale:
            (self.folder / relative).unlink()
            del self.previous[relative]
        return len(stale)

    def wrote(self, path: Path) -> None:
        self.written[path.relative_to(self.folder).as_posix()] = file_sha256(path)

    def save_record(self) -> None:
        """Earlier entries that still hold seg's bytes stay (a later eval of another split may write
        other overlays), new ones are added; written to a temporary file and renamed into place."""
        files = {r: h for r, h in self.previous.items() if self.ours(r)} | self.written
        tmp = self.folder / f"{RECORD}.tmp"
        tmp.write_text(json.dumps({"written_by": self.command, "files": dict(sorted(files.items()))}, indent=1))
        os.replace(tmp, self.folder / RECORD)
