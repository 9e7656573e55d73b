"""A loopback HTTP server for the download tests: serves a folder, honours `Range: bytes=N-` (or not,
on demand), can cut one response short, and records every request it saw."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class ServerState:
    """What the test controls (`ignore_range`, `cut_next_after`) and observes (`requests`)."""

    folder: Path
    url: str = ""
    ignore_range: bool = False
    cut_next_after: int | None = None  # the next GET sends only this many bytes, then hangs up
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _RangeHandler(SimpleHTTPRequestHandler):
    state: ServerState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Keep pytest output clean."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        state = self.state
        state.requests.append((self.path, self.headers.get("Range")))
        path = state.folder / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_next_after is not None:
            body, state.cut_next_after = body[: state.cut_next_after], None
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[ServerState]:
    """Serve `tmp_path/served` on 127.0.0.1 (random port) for one test; stopped in teardown."""
    folder = tmp_path / "served"
    folder.mkdir()
    state = ServerState(folder=folder)
    handler = type("Handler", (_RangeHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
