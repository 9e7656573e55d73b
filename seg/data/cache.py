"""Decode once: resized arrays kept on disk as .npy files and opened memory-mapped.

A cache entry is a folder `<cache_dir>/<name>-<key>/` with images.npy (N,H,W,C uint8 or float32),
masks.npy (N,H,W uint8), optional weights.npy (N,H,W float32) and ids.json. The key hashes everything
that changes the arrays, so a changed config makes a new entry and never reads a stale one. Entries are
written to a temporary folder and renamed into place, so an interrupted build leaves nothing half-done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from seg.data.io import share_like_umask
from seg.errors import ConfigError

CACHE_VERSION = 1


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
    ids: list[str]
    weights: np.ndarray | None = None
    path: Path | None = None


def load_entry(path: Path) -> CachedArrays:
    weights = path / "weights.npy"
    return CachedArrays(
        images=np.load(path / "images.npy", mmap_mode="r"),
        masks=np.load(path / "masks.npy", mmap_mode="r"),
        ids=json.loads((path / "ids.json").read_text()),
        weights=np.load(weights, mmap_mode="r") if weights.exists() else None,
        path=path,
    )


def build_or_load(
    cache_dir: str | Path | None,
    name: str,
    fields: Mapping[str, Any],
    ids: list[str],
    load: Callable[[str], tuple[np.ndarray, np.ndarray]],
    weight_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    desc: str | None = None,
) -> CachedArrays:
    """Return the cached arrays for `fields`, decoding every id with `load` on the first call only.

    `load(id)` returns (image HxWxC, mask HxW) already resized to a common size. Arrays are written
    case by case into memory-mapped files, so RAM stays bounded by one case however large the set.
    """
    root = cache_root(cache_dir)
    # The ids are part of the key: adding or removing files makes a new entry, never a stale one.
    ids_digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    entry = root / f"{name}-{cache_key({**fields, 'ids': ids_digest})}"
    if (entry / "ids.json").exists():
        return load_entry(entry)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        share_like_umask(tmp, directory=True)
        _write_arrays(tmp, ids, load, weight_fn, desc or f"decoding {name}")
        (tmp / "meta.json").write_text(json.dumps(dict(fields), indent=1, default=str))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_entry(entry)


def _write_arrays(
    out: Path,
    ids: list[str],
    load: Callable[[str], tuple[np.ndarray, np.ndarray]],
    weight_fn: Callable[[np.ndarray], np.ndarray] | None,
    desc: str,
) -> None:
    images = masks = weights = None

    def decode(case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image, mask = load(case)
        return image, mask, (weight_fn(mask) if weight_fn is not None else None)

    # Decoders and resizing (PIL, SimpleITK, scikit-image) release the GIL: threads decode in
    # parallel while this thread writes the results in order.
    workers = decode_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = _ordered(pool, decode, ids, window=4 * workers)
        for i, (image, mask, weight) in enumerate(tqdm(decoded, total=len(ids), desc=desc, unit="img",
                                                       leave=False, disable=None)):
            if images is None:
                images = np.lib.format.open_memmap(out / "images.npy", "w+", image.dtype, (len(ids), *image.shape))
                masks = np.lib.format.open_memmap(out / "masks.npy", "w+", np.uint8, (len(ids), *mask.shape))
                if weight is not None:
                    weights = np.lib.format.open_memmap(out / "weights.npy", "w+", np.float32, (len(ids), *mask.shape))
            images[i] = image
            masks[i] = mask
            if weights is not None:
                weights[i] = weight
    for arr in (images, masks, weights):
        if arr is not None:
            arr.flush()
    (out / "ids.json").write_text(json.dumps(list(ids)))


def decode_workers() -> int:
    """Threads that decode while the cache is built (`SEG_DECODE_WORKERS` to change)."""
    value = os.environ.get("SEG_DECODE_WORKERS", str(min(8, os.cpu_count() or 1)))
    if not value.strip().isdigit():
        raise ConfigError(f"SEG_DECODE_WORKERS={value!r} must be a whole number of threads (e.g. 4)")
    return max(1, int(value))


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[str], Any], ids: list[str], window: int) -> Iterator[Any]:
    """pool.map with a bounded window, so finished-but-unwritten cases never pile up in memory."""
    pending: deque = deque()
    for case in ids:
        pending.append(pool.submit(fn, case))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def iter_entries(cache_dir: str | Path) -> Iterable[Path]:
    return sorted(p for p in Path(cache_dir).expanduser().glob("*-*") if (p / "ids.json").exists())
