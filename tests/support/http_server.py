"""A loopback HTTP server for test fixtures (no network in tests).

    with LoopbackServer(root, delay_s=0.5, fail_first={"/a.html": 2}, status_for={"/gone.html": 404}) as srv:
        url = srv.base_url + "/a.html"

Serves the files under `root` from 127.0.0.1 with the right Content-Type, answers HEAD and single
byte-range requests (206 / 416, as yt-dlp's HTTP downloader expects), and records every requested path
(`requests`), with its time (`times`: (path, time.monotonic()) on arrival) and Authorization header
(`auth`). The query string is ignored (signed URLs serve the same file); `throttle={"/a.html": (1, "2")}`
answers the first request of a path with 429 and `Retry-After: 2`.
"""

from __future__ import annotations

import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fixtures.loopback import LoopbackHTTP, QuietServer

CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".webm": "video/webm",
    ".vtt": "text/vtt; charset=utf-8",
    ".srt": "application/x-subrip; charset=utf-8",
    ".json": "application/json",
    ".json3": "application/json",
    ".jsonl": "application/x-ndjson",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".wav": "audio/wav",
}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server: QuietServer
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackServer/1.0"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - silence request logging
        pass

    def do_GET(self):  # noqa: N802
        self._answer(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._answer(send_body=False)

    # ------------------------------------------------------------------
    def _answer(self, send_body: bool) -> None:
        owner = self.server.owner
        path = unquote(urlsplit(self.path).path)
        owner._record(path, self.headers.get("Authorization"), self.path)
        if owner.delay_s > 0:
            time.sleep(owner.delay_s)
        self.close_connection = True
        status = owner.status_for.get(path)
        if status is not None:
            return self._status(status, send_body)
        retry_after = owner._throttled(path)
        if retry_after is not None:
            return self._status(HTTPStatus.TOO_MANY_REQUESTS, send_body, {"Retry-After": retry_after})
        if owner._should_fail(path):
            return self._status(HTTPStatus.SERVICE_UNAVAILABLE, send_body)
        file = owner._resolve(path)
        if file is None:
            return self._status(HTTPStatus.NOT_FOUND, send_body)
        size = file.stat().st_size
        ctype = CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
        start, end = 0, size - 1
        code = HTTPStatus.OK
        header = self.headers.get("Range")
        if header:
            rng = _parse_range(header, size)
            if rng is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                return
            start, end = rng
            code = HTTPStatus.PARTIAL_CONTENT
        length = max(0, end - start + 1)
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if code == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Connection", "close")
        self.end_headers()
        if not send_body or length == 0:
            return
        try:
            with open(file, "rb") as fh:
                fh.seek(start)
                remaining = length
                while remaining > 0:
                    block = fh.read(min(64 * 1024, remaining))
                    if not block:
                        break
                    self.wfile.write(block)
                    remaining -= len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _status(self, status: int, send_body: bool, headers: dict[str, str] | None = None) -> None:
        status = HTTPStatus(status)
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range; None when unsatisfiable or malformed."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class LoopbackServer(LoopbackHTTP):
    """Serve `root` on http://127.0.0.1:PORT (port 0: the OS picks one). A context manager."""

    handler, name = _Handler, "LoopbackServer"

    def __init__(self, root: str | Path, delay_s: float = 0.0, fail_first: dict[str, int] | None = None,
                 status_for: dict[str, int] | None = None, port: int = 0,
                 throttle: dict[str, tuple[int, str]] | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"LoopbackServer root is not a directory: {self.root}")
        self.delay_s = float(delay_s)
        self.fail_first = dict(fail_first or {})
        self.status_for = dict(status_for or {})
        super().__init__(port)
        self.throttle = dict(throttle or {})   # path -> (429 answers, Retry-After value)
        self.requests: list[str] = []
        self.times: list[tuple[str, float]] = []
        self.targets: list[str] = []            # the request targets as sent (query included)
        self.auth: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # ------------------------------------------------------------------
    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.count(path)

    def _record(self, path: str, auth: str | None = None, target: str | None = None) -> None:
        with self._lock:
            self.requests.append(path)
            self.targets.append(target or path)
            self.times.append((path, time.monotonic()))
            self.auth.append((path, auth))

    def times_of(self, path: str) -> list[float]:
        with self._lock:
            return [t for p, t in self.times if p == path]

    def _throttled(self, path: str) -> str | None:
        with self._lock:
            count, value = self.throttle.get(path, (0, ""))
            if count <= 0:
                return None
            self.throttle[path] = (count - 1, value)
            return value

    def _should_fail(self, path: str) -> bool:
        with self._lock:
            budget = self.fail_first.get(path, 0)
            done = self._failures.get(path, 0)
            if done < budget:
                self._failures[path] = done + 1
                return True
            return False

    def _resolve(self, path: str) -> Path | None:
        rel = path.lstrip("/")
        if not rel:
            return None
        try:
            file = (self.root / rel).resolve()
            file.relative_to(self.root)
        except (ValueError, OSError):
            return None
        return file if file.is_file() else None


__all__ = ["LoopbackServer", "CONTENT_TYPES"]
