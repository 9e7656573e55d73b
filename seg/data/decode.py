"""Decoding many cases on a thread pool, in order, with a bounded window; and the way a loader says
that one case is unusable but may be left out."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from seg.errors import ConfigError


class SkipCase(Exception):
    """Raised by a loader for a case that cannot be decoded but may be left out, named in a warning,
    instead of stopping the run: `reason` groups cases in the warning, `detail` names the file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_workers() -> int:
    """Threads that decode while the cache is built (`SEG_DECODE_WORKERS` to change)."""
    value = os.environ.get("SEG_DECODE_WORKERS", str(min(8, os.cpu_count() or 1)))
    if not value.strip().isdigit():
        raise ConfigError(f"SEG_DECODE_WORKERS={value!r} must be a whole number of threads (e.g. 4)")
    return max(1, int(value))


def decode_in_threads(fn: Callable[[str], Any], cases: Sequence[str], desc: str) -> Iterator[Any]:
    """fn(case) for every case, results in order, with a progress bar."""
    # Decoders and resizing (PIL, SimpleITK, scikit-image) release the GIL: threads decode in
    # parallel while the caller writes the results in order.
    workers = decode_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = _ordered(pool, fn, cases, window=4 * workers)
        yield from tqdm(results, total=len(cases), desc=desc, unit="img", leave=False, disable=None)


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[str], Any], ids: Sequence[str], window: int) -> Iterator[Any]:
    """pool.map with a bounded window, so finished-but-unwritten cases never pile up in memory."""
    pending: deque = deque()
    for case in ids:
        pending.append(pool.submit(fn, case))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
