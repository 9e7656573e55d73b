"""Decode once: resized arrays kept on disk as .npy files and opened memory-mapped.

A cache entry is a folder `<cache_dir>/<name>-<key>/` with images.npy (N,H,W,C uint8 or float32),
masks.npy (N,H,W uint8), optional weights.npy (N,H,W float32), rows.json and ids.json. The key hashes
everything that changes the arrays, so a changed config makes a new entry and never reads a stale one.
Entries are written to a temporary folder and renamed into place, so an interrupted build leaves
nothing half-done.

rows.json holds, per row, the size and modification time of the files it was decoded from (and what
the reader noted: a case skipped as unreadable, unexpected mask values). At every load those files are
stat'ed; rows whose files changed or vanished are decoded again and rewritten in place under an
exclusive lock on the entry, and rows.json is replaced last, so an interrupted refresh is redone by
the next run and a second process waiting on the lock finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.data.decode import SkipCase, decode_in_threads, decode_workers
from seg.data.io import share_like_umask
from seg.data.sources import SourceStats
from seg.errors import DatasetError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two processes refreshing one entry is then unguarded
    fcntl = None  # type: ignore[assignment]

# decode_workers lived here before seg.data.decode existed; callers still import it from here.
__all__ = ["CachedArrays", "SkipCase", "build_or_load", "cache_key", "cache_root", "decode_workers",
           "default_cache_dir", "iter_entries", "load_entry"]

log = logging.getLogger("seg.data")

CACHE_VERSION = 2  # 2: rows.json (per-row source stats and notes)
ROWS = "rows.json"
ARRAYS = ("images", "masks", "weights")

Loader = Callable[[str], tuple[Any, ...]]  # id -> (image, mask) or (image, mask, note)


def cache_key(fields: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """The one rule for where caches go by default: $SEG_CACHE_DIR, else ~/.cache/seg. Dataset configs
    say `cache_dir: null` for it, so a run (and its checkpoint) follows the machine it runs on."""
    return Path(os.environ.get("SEG_CACHE_DIR") or Path.home() / ".cache" / "seg").expanduser()


def cache_root(cache_dir: str | Path | None) -> Path:
    """The folder a dataset caches under: `cache_dir` when given, else default_cache_dir()."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


@dataclass
class CachedArrays:
    images: np.ndarray
    masks: np.ndarray
    ids: list[str]  # one per row, skipped cases included (their rows hold zeros)
    weights: np.ndarray | None = None
    path: Path | None = None
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)  # case -> what its reader noted

    @property
    def skipped(self) -> dict[str, tuple[str, str]]:
        """Cases left out as undecodable: id -> (reason, detail)."""
        return {c: (n["skipped"][0], n["skipped"][1]) for c, n in self.notes.items() if "skipped" in n}


def _read_entry(path: Path) -> tuple[CachedArrays, dict[str, Any]]:
    weights = path / "weights.npy"
    rows = json.loads((path / ROWS).read_text()) if (path / ROWS).is_file() else {}
    arrays = CachedArrays(
        images=np.load(path / "images.npy", mmap_mode="r"),
        masks=np.load(path / "masks.npy", mmap_mode="r"),
        ids=json.loads((path / "ids.json").read_text()),
        weights=np.load(weights, mmap_mode="r") if weights.exists() else None,
        path=path,
        notes=rows.get("notes", {}),
    )
    return arrays, rows


def load_entry(path: Path) -> CachedArrays:
    return _read_entry(path)[0]


@dataclass
class _Job:
    """What decoding a set of rows needs, for a first build and for a refresh alike."""

    ids: list[str]
    load: Loader
    weight_fn: Callable[[np.ndarray], np.ndarray] | None
    sources: SourceStats | None
    desc: str

    def decode(self, case: str) -> tuple[Any, ...] | SkipCase:
        try:
            result = self.load(case)
        except SkipCase as skip:
            return skip
        image, mask, note = (*result, None)[:3]
        return image, mask, (self.weight_fn(mask) if self.weight_fn is not None else None), note

    def decoded(self, cases: Sequence[str]) -> Iterator[tuple[Any, ...] | SkipCase]:
        return decode_in_threads(self.decode, cases, self.desc)

    def stale(self, rows: Mapping[str, Any]) -> list[str]:
        """Cases whose recorded source files differ from the current ones (size, mtime, vanished)."""
        if self.sources is None:
            return []
        files, cases = rows.get("files", []), rows.get("cases", [])
        if len(cases) != len(self.ids):  # no or foreign record: trust no row
            return list(self.ids)
        return [c for c, row in zip(self.ids, cases) if [files[i] for i in row] != self.sources.signature(c)]

    def write_rows(self, folder: Path, notes: Mapping[str, Any]) -> None:
        files, cases = self.sources.table(self.ids) if self.sources else ([], [[] for _ in self.ids])
        _write_json(folder / ROWS, {"files": files, "cases": cases, "notes": dict(notes)})


def build_or_load(
    cache_dir: str | Path | None,
    name: str,
    fields: Mapping[str, Any],
    ids: list[str],
    load: Loader,
    weight_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    desc: str | None = None,
    sources: SourceStats | None = None,
) -> CachedArrays:
    """Return the cached arrays for `fields`, decoding every id with `load` on the first call only.

    `load(id)` returns (image HxWxC, mask HxW) already resized to a common size, optionally with a
    third item, a JSON-able note kept with the row; it raises SkipCase to leave a case out. Arrays are
    written case by case into memory-mapped files, so RAM stays bounded by one case however large the
    set. With `sources` (stats taken before decoding), rows whose files changed since are decoded again.
    """
    root = cache_root(cache_dir)
    # The ids are part of the key: adding or removing files makes a new entry, never a stale one.
    ids_digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    entry = root / f"{name}-{cache_key({**fields, 'ids': ids_digest})}"
    job = _Job(list(ids), load, weight_fn, sources, desc or f"decoding {name}")
    if not (entry / "ids.json").exists():
        _build(root, entry, fields, job)
    arrays, rows = _read_entry(entry)
    if job.stale(rows):
        arrays = _refresh(entry, job, name)
    return arrays


def _build(root: Path, entry: Path, fields: Mapping[str, Any], job: _Job) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        share_like_umask(tmp, directory=True)
        _write_arrays(tmp, job)
        (tmp / "meta.json").write_text(json.dumps(dict(fields), indent=1, default=str))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_arrays(out: Path, job: _Job) -> None:
    arrays: dict[str, np.ndarray] = {}
    notes: dict[str, Any] = {}
    n = len(job.ids)
    for i, (case, result) in enumerate(zip(job.ids, job.decoded(job.ids))):
        decoded = _noted(case, result, notes)
        if decoded is None:
            continue
        image, mask, weight = decoded
        if not arrays:  # shapes come from the first decoded case (all are resized alike)
            arrays["images"] = np.lib.format.open_memmap(out / "images.npy", "w+", image.dtype, (n, *image.shape))
            arrays["masks"] = np.lib.format.open_memmap(out / "masks.npy", "w+", np.uint8, (n, *mask.shape))
            if weight is not None:
                arrays["weights"] = np.lib.format.open_memmap(out / "weights.npy", "w+", np.float32, (n, *mask.shape))
        _write_row(arrays, i, image, mask, weight, out)
    if not arrays:
        details = [note["skipped"][1] for note in notes.values()]
        raise DatasetError(
            f"{job.desc}: none of the {n} case(s) could be decoded ({_names(details)}); fix or replace "
            "these files"
        )
    for arr in arrays.values():
        arr.flush()
    job.write_rows(out, notes)
    (out / "ids.json").write_text(json.dumps(job.ids))


def _noted(case: str, result: Any, notes: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, Any] | None:
    """Record a decoded case's note (or why it was skipped) in `notes`; its arrays, None if skipped."""
    if isinstance(result, SkipCase):
        notes[case] = {"skipped": [result.reason, result.detail]}
        return None
    image, mask, weight, note = result
    if note:
        notes[case] = note
    return image, mask, weight


def _write_row(arrays: Mapping[str, np.ndarray], i: int, image: np.ndarray, mask: np.ndarray,
               weight: np.ndarray | None, entry: Path) -> None:
    if image.shape != arrays["images"].shape[1:] or mask.shape != arrays["masks"].shape[1:]:
        raise DatasetError(
            f"cache entry {entry}: a case decodes to image {image.shape} / mask {mask.shape} but the rows "
            f"are {arrays['images'].shape[1:]} / {arrays['masks'].shape[1:]}; remove this entry folder"
        )
    arrays["images"][i] = image
    arrays["masks"][i] = mask
    if "weights" in arrays:
        arrays["weights"][i] = weight


def _refresh(entry: Path, job: _Job, name: str) -> CachedArrays:
    """Decode the stale rows again, in place, then record the new stats."""
    with _locked(entry):
        arrays, rows = _read_entry(entry)
        stale = job.stale(rows)  # again: another process may have refreshed it while we waited
        if not stale:
            return arrays
        writable = {k: _writable(entry / f"{k}.npy") for k in ARRAYS if (entry / f"{k}.npy").exists()}
        position = {case: i for i, case in enumerate(job.ids)}
        notes = dict(arrays.notes)
        for case, result in zip(stale, job.decoded(stale)):
            notes.pop(case, None)
            decoded = _noted(case, result, notes)
            if decoded is not None:
                _write_row(writable, position[case], *decoded, entry)
        for arr in writable.values():
            arr.flush()
        job.write_rows(entry, notes)  # last: until here the next run still sees these rows as stale
    count = f"{len(stale)} case{'s' if len(stale) != 1 else ''}"
    log.info("%s: %s decoded again (source files changed since they were cached): %s", name, count, _names(stale))
    return load_entry(entry)


def _unwritable(entry: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        f"cache entry {entry} is out of date (source files changed) but cannot be updated: {exc.strerror}; "
        "set SEG_CACHE_DIR to a folder of your own, or ask its owner to remove the entry"
    )


def _writable(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r+")
    except PermissionError as exc:
        raise _unwritable(path.parent, exc) from None


@contextmanager
def _locked(entry: Path) -> Iterator[None]:
    try:
        handle = open(entry / ".lock", "a")  # noqa: SIM115 (closed below, after the yield)
    except PermissionError as exc:
        raise _unwritable(entry, exc) from None
    with handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _names(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


def iter_entries(cache_dir: str | Path) -> Iterable[Path]:
    return sorted(p for p in Path(cache_dir).expanduser().glob("*-*") if (p / "ids.json").exists())
