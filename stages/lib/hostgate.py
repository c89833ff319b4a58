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

    def wait(self, host: str, per_minute: float = 0.0) -> float:
        """Blocks until a fetch from `host` may start; returns the seconds waited."""
        with self.lock:
            now = self.clock()
            start = max(now, self.next_start.get(host, now), self.paused_until.get(host, now))
            if per_minute > 0:
                self.next_start[host] = start + 60.0 / per_minute
        if start > now:
            self.sleep(start - now)
        return start - now

    def pause(self, host: str, seconds: float) -> None:
        """No fetch from `host` starts for `seconds` from now (a longer pause already set stays)."""
        with self.lock:
            until = self.clock() + seconds
            self.paused_until[host] = max(self.paused_until.get(host, 0.0), until)


GATE = HostGate()
