"""Per-host pacing of fetches in one worker process: a rate limit (fetches started per minute) and a pause
of the whole host after a reply that means "slow down" (HTTP 429, YouTube's bot check), so the other
rows in flight wait instead of earning their own 429s.

`GATE` is module state: every thread of every part that a Ray worker process runs shares it (Ray reuses
worker processes). It does not coordinate separate processes or nodes: the cluster-wide rate is at
most `host_requests_per_min` times the number of download workers (parts in flight).
"""
from __future__ import annotations

import threading
import time
import urllib.parse


def host_of(url: str) -> str:
    """The host a fetch goes to (youtu.be and YouTube's subdomains count as youtube.com)."""
    host = (urllib.parse.urlparse(url).hostname or "").lower()
    return "youtube.com" if host.endswith(".youtube.com") or host in ("youtube.com", "youtu.be") else host


class HostGate:
    def __init__(self, clock=time.monotonic, sleep=time.sleep) -> None:
        self.lock = threading.Lock()
        self.next_start: dict[str, float] = {}
        self.paused_until: dict[str, float] = {}
        self.clock, self.sleep = clock, sleep

    def wait(self, host: str, per_minute: float = 0.0, poll_s: float = 0.1) -> float:
        """Blocks until a fetch from `host` may start: `60 / per_minute` s after the last start, and not
        while the host is paused (a pause set while waiting counts: waiters look again every `poll_s`).
        Returns the seconds waited."""
        first = self.clock()
        while True:
            with self.lock:
                now = self.clock()
                earliest = max(self.next_start.get(host, now), self.paused_until.get(host, now))
                if earliest <= now:
                    if per_minute > 0:
                        self.next_start[host] = now + 60.0 / per_minute
                    return now - first
            self.sleep(min(earliest - now, poll_s))

    def pause(self, host: str, seconds: float) -> None:
        """No fetch from `host` starts for `seconds` from now (a longer pause already set stays)."""
        with self.lock:
            until = self.clock() + seconds
            self.paused_until[host] = max(self.paused_until.get(host, 0.0), until)


GATE = HostGate()
