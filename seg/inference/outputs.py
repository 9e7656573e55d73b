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
import tempfile
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
        if not isinstance(files, dict):
            return {}
        # The record may be crafted: only plain relative paths inside the folder count.
        return {str(k): str(v) for k, v in files.items() if isinstance(k, str) and self._inside(k)}

    def _inside(self, relative: str) -> bool:
        parts = Path(relative).parts
        return bool(parts) and not Path(relative).is_absolute() and ".." not in parts and "\\" not in relative

    def _through_link(self, relative: str) -> bool:
        """Whether `relative`, or a folder on the way to it, is a link (which may point anywhere)."""
        path = self.folder
        for part in Path(relative).parts:
            path = path / part
            if path.is_symlink():
                return True
        return False

    def ours(self, relative: str) -> bool:
        """Whether `relative` is a file seg wrote and nobody changed since (never through a link)."""
        path = self.folder / relative
        return (relative in self.previous and self._inside(relative) and not self._through_link(relative)
                and path.is_file() and file_sha256(path) == self.previous[relative])

    def claim(self, relatives: Iterable[str]) -> None:
        """Refuse, before anything is written, to replace a file of the user's (a link, even a dangling
        one, is the user's: writing through it would write wherever it points)."""
        theirs = [r for r in relatives
                  if self._through_link(r) or (os.path.lexists(self.folder / r) and not self.ours(r))]
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
        if (self.folder / RECORD).is_symlink():
            raise ConfigError(f"{self.folder / RECORD} is a link; {self.command} keeps its record only in a plain file")
        fd, tmp = tempfile.mkstemp(prefix=f"{RECORD}.", suffix=".tmp", dir=self.folder)  # a fresh name, never a link
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"written_by": self.command, "files": dict(sorted(files.items()))}, indent=1))
        os.replace(tmp, self.folder / RECORD)
