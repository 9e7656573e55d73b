"""HTTP download of one file: resumable, checksummed, never leaving a half file under the final name.

urllib only (no extra dependency). Bytes stream into `<file>.part`; an existing `.part` is resumed with
a `Range` request, and a server that ignores it (200 instead of 206) restarts the file from zero. The
digest is computed while streaming, so a 6 GB archive is read from disk at most once more (the resumed
prefix). A checksum mismatch keeps the bytes as `<file>.bad` for inspection and raises.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from seg.errors import SegError

CHUNK = 1 << 20
USER_AGENT = "seg-download/0.1 (+urllib)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class DownloadError(SegError):
    """A download that failed: unreachable server, HTTP error, short transfer, wrong checksum, bad archive."""


class _NetworkError(Exception):
    """Internal: a transfer failure worth retrying or trying on the next mirror; carries bytes received."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


def sidecar(path: Path) -> Path:
    """Where the SHA-256 of a file without a published checksum is written, in `sha256sum` format."""
    return path.with_name(path.name + ".sha256")


def file_digests(path: Path) -> dict[str, str]:
    """SHA-256 and MD5 of a file in one pass."""
    hashers = _hashers()
    _feed(hashers, path)
    return {name: h.hexdigest() for name, h in hashers.items()}


def fetch(
    urls: str | Sequence[str],
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 30.0,
    attempts: int = 5,
    progress: bool = True,
) -> str:
    """Download to `dest` (mirrors tried in order) and return its SHA-256.

    Skips the transfer when `dest` already holds the expected bytes. Without a published checksum the
    SHA-256 is printed and stored in `<dest>.sha256`, which later runs then verify against.
    """
    dest = Path(dest)
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise DownloadError(f"no URL to download {dest.name} from; give one, or a --base-url.")
    published = {k: v.lower() for k, v in (("sha256", sha256), ("md5", md5)) if v}
    if dest.is_file():
        digests = file_digests(dest)
        expected = published or _pinned(dest)
        if _mismatch(expected, digests) is None:
            print(f"{dest.name}: present, checksum OK" if expected else f"{dest.name}: present")
            if not expected:
                _pin(dest, digests["sha256"])
            return digests["sha256"]
        bad = _set_aside(dest, dest)
        sidecar(dest).unlink(missing_ok=True)
        print(f"{dest.name}: present but its checksum is wrong; moved to {bad.name}, downloading again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in url_list:
        for _ in range(max(1, attempts)):
            try:
                digests = _transfer(url, dest, timeout=timeout, progress=progress)
                return _finish(dest, digests, published)
            except _NetworkError as exc:
                reason = str(exc)
                if exc.received == 0:
                    break  # no progress: retrying the same URL would fail the same way
        failures.append(f"{url}: {reason}")
    raise DownloadError(
        f"could not download {dest.name}: " + "; ".join(failures)
        + f". Check the network (or --base-url) and run the command again; "
        f"it resumes from {_part(dest).name} when the server allows it."
    )


def _hashers() -> dict[str, Any]:
    return {"sha256": hashlib.sha256(), "md5": hashlib.md5()}


def _feed(hashers: dict[str, Any], path: Path) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            for h in hashers.values():
                h.update(chunk)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _pinned(dest: Path) -> dict[str, str]:
    """The SHA-256 an earlier run recorded for a file without a published checksum, if any."""
    words = sidecar(dest).read_text(encoding="utf-8").split() if sidecar(dest).is_file() else []
    return {"sha256": words[0].lower()} if words and re.fullmatch(r"[0-9a-fA-F]{64}", words[0]) else {}


def _mismatch(expected: dict[str, str], digests: dict[str, str]) -> tuple[str, str, str] | None:
    """(algorithm, expected, actual) of the first disagreeing checksum, or None."""
    for name, value in expected.items():
        if digests[name] != value:
            return name, value, digests[name]
    return None


def _set_aside(path: Path, dest: Path) -> Path:
    """Keep rejected bytes as `<dest>.bad` rather than deleting what may have taken hours to fetch."""
    bad = dest.with_name(dest.name + ".bad")
    path.replace(bad)
    return bad


def _pin(dest: Path, digest: str) -> None:
    """Record the SHA-256 of a file nobody published a checksum for, so users can pin it."""
    sidecar(dest).write_text(f"{digest}  {dest.name}\n", encoding="utf-8")
    print(f"{dest.name}: no published checksum; SHA-256 {digest} (saved in {sidecar(dest).name})")


def _finish(dest: Path, digests: dict[str, str], published: dict[str, str]) -> str:
    part = _part(dest)
    wrong = _mismatch(published, digests)
    if wrong is not None:
        algo, want, got = wrong
        bad = _set_aside(part, dest)
        raise DownloadError(
            f"checksum mismatch for {dest.name}: expected {algo} {want}, got {got}. The bytes were kept "
            f"as {bad} for inspection; delete it and run again, or check the mirror/--base-url."
        )
    part.replace(dest)
    if not published:
        _pin(dest, digests["sha256"])
    return digests["sha256"]


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resume_point(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Where the body starts in the file: `offset` (resumed), 0 (server sent it all), None (unusable)."""
    if response.status != 206:
        return 0
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return offset if match and int(match.group(1)) == offset else None


def _connect(url: str, part: Path, timeout: float) -> tuple[http.client.HTTPResponse, int]:
    """Open `url` continuing `part` where possible; a .part the server cannot continue is dropped."""
    offset = part.stat().st_size if part.is_file() else 0
    if offset:
        try:
            response = _open(url, offset, timeout)
            start = _resume_point(response, offset)
            if start is not None:
                return response, start
            response.close()
        except urllib.error.HTTPError as exc:
            if exc.code != 416:  # 416: the .part is not a prefix the server recognises
                raise
        part.unlink()
    return _open(url, 0, timeout), 0


def _transfer(url: str, dest: Path, *, timeout: float, progress: bool) -> dict[str, str]:
    """Stream `url` into `<dest>.part`, resuming when possible; digests of the whole file."""
    part = _part(dest)
    had_part = part.is_file() and part.stat().st_size > 0
    received = 0
    try:
        response, start = _connect(url, part, timeout)
        with response:
            if had_part and start == 0:
                print(f"{dest.name}: the server did not resume the partial download; starting over")
            hashers = _hashers()
            if start:
                _feed(hashers, part)
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            with part.open("ab" if start else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=None if progress else True, leave=False,
            ) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise _NetworkError(f"server answered HTTP {exc.code} {exc.reason}", received) from None
    except urllib.error.URLError as exc:
        raise _NetworkError(f"cannot connect ({exc.reason})", received) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _NetworkError(f"transfer failed ({exc.__class__.__name__}: {exc})", received) from None
    if total is not None and start + received != total:
        raise _NetworkError(f"connection closed after {start + received} of {total} bytes", received)
    return {name: h.hexdigest() for name, h in hashers.items()}
