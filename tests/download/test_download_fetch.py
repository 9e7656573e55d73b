"""fetch(): full download, resume, servers that ignore Range, short transfers, checksums, errors."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from seg.download.fetch import DownloadError, fetch, sidecar
from seg.errors import SegError

SIZE = 300_000


@pytest.fixture
def payload(http_server) -> bytes:
    data = os.urandom(SIZE)
    (http_server.folder / "blob.bin").write_bytes(data)
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_verifies_sha256_and_md5(http_server, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "blob.bin"
    digest = fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload),
                   md5=hashlib.md5(payload).hexdigest(), timeout=5)
    assert digest == _sha(payload)
    assert dest.read_bytes() == payload
    assert not dest.with_name("blob.bin.part").exists()
    assert not sidecar(dest).exists()  # a published checksum needs no pin
    assert http_server.requests == [("/blob.bin", None)]


def test_resume_from_truncated_part_sends_range(http_server, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(payload[:100_000])
    fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload), timeout=5)
    assert http_server.requests == [("/blob.bin", "bytes=100000-")]
    assert dest.read_bytes() == payload


def test_server_ignoring_range_restarts_from_zero(http_server, payload: bytes, tmp_path: Path,
                                                  capsys) -> None:
    http_server.ignore_range = True
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"\0" * 50_000)  # wrong bytes: must not survive
    fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload), timeout=5)
    assert http_server.requests == [("/blob.bin", "bytes=50000-")]
    assert dest.read_bytes() == payload
    assert "starting over" in capsys.readouterr().out


def test_part_longer_than_file_gets_416_and_restarts(http_server, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"x" * (SIZE + 10))
    fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload), timeout=5)
    assert http_server.requests == [("/blob.bin", f"bytes={SIZE + 10}-"), ("/blob.bin", None)]
    assert dest.read_bytes() == payload


def test_connection_cut_mid_transfer_is_resumed(http_server, payload: bytes, tmp_path: Path) -> None:
    http_server.cut_next_after = 120_000
    dest = tmp_path / "blob.bin"
    fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload), timeout=5)
    assert http_server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=120000-")]
    assert dest.read_bytes() == payload


def test_checksum_mismatch_keeps_bad_file_and_names_both_digests(http_server, payload: bytes,
                                                                 tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        fetch(f"{http_server.url}/blob.bin", dest, sha256=wrong, timeout=5)
    message = str(info.value)
    assert isinstance(info.value, SegError)
    assert "blob.bin" in message and wrong in message and _sha(payload) in message
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()
    assert dest.with_name("blob.bin.bad").read_bytes() == payload


def test_existing_good_file_is_not_downloaded_again(http_server, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(payload)
    assert fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload), timeout=5) == _sha(payload)
    assert http_server.requests == []


def test_existing_corrupt_file_is_set_aside_and_fetched(http_server, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"corrupt")
    fetch(f"{http_server.url}/blob.bin", dest, sha256=_sha(payload), timeout=5)
    assert dest.read_bytes() == payload
    assert dest.with_name("blob.bin.bad").read_bytes() == b"corrupt"
    assert len(http_server.requests) == 1


def test_unknown_checksum_is_printed_pinned_and_then_verified(http_server, payload: bytes, tmp_path: Path,
                                                               capsys) -> None:
    dest = tmp_path / "blob.bin"
    fetch(f"{http_server.url}/blob.bin", dest, timeout=5)
    assert _sha(payload) in capsys.readouterr().out
    assert sidecar(dest).read_text() == f"{_sha(payload)}  blob.bin\n"
    # Second run: verified against the pin, no request.
    fetch(f"{http_server.url}/blob.bin", dest, timeout=5)
    assert "checksum OK" in capsys.readouterr().out
    assert len(http_server.requests) == 1
    # Local corruption is caught by the pin and repaired.
    dest.write_bytes(b"flipped")
    fetch(f"{http_server.url}/blob.bin", dest, timeout=5)
    assert dest.read_bytes() == payload and len(http_server.requests) == 2


def test_http_404_is_a_clear_error(http_server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"could not download missing\.bin: .*HTTP 404"):
        fetch(f"{http_server.url}/missing.bin", tmp_path / "missing.bin", timeout=5)
    assert len(http_server.requests) == 1  # no progress, so no pointless retries


def test_next_mirror_is_tried_after_a_failure(http_server, payload: bytes, tmp_path: Path) -> None:
    urls = [f"{http_server.url}/gone/blob.bin", f"{http_server.url}/blob.bin"]
    fetch(urls, tmp_path / "blob.bin", sha256=_sha(payload), timeout=5)
    assert [path for path, _ in http_server.requests] == ["/gone/blob.bin", "/blob.bin"]
    assert (tmp_path / "blob.bin").read_bytes() == payload


def test_closed_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=r"could not download x\.bin: .*cannot connect"):
        fetch(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", timeout=5)
    assert not (tmp_path / "x.bin").exists()
