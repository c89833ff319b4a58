"""Client-side throttling of a paid API: token buckets on requests/min and tokens/min, and retries with
exponential backoff and jitter that honour the server's Retry-After.

One `RateLimiter` is shared by every request thread of a worker, so the limit holds however many parts
the worker runs at once. A 429 pauses the whole limiter (not only the thread that got it): the server
has said the account is over its limit.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")
BURST_S = 1.0   # a bucket holds this many seconds of its rate: steady pacing, no minute-long bursts


class Transient(Exception):
    """A failure worth retrying: rate limit (429), server error (5xx), timeout, dropped connection."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.retry_after = code, retry_after


class GaveUp(Exception):
    """A request that failed `attempts` times (or for good); `code` is the row's reason code."""

    def __init__(self, code: str, message: str, attempts: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.attempts = code, attempts


class TokenBucket:
    """`per_minute` units refilled continuously; `take(n)` blocks until the level allows it. A take larger
    than the bucket waits for a full bucket and leaves it in debt, so big requests still pass at the rate."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_S)
        self.level, self.clock = self.capacity, clock
        self.updated = clock()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, n: float, now: float) -> float:
        """Seconds until `n` units can be taken (0: now)."""
        self._refill(now)
        need = min(n, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, n: float) -> None:
        self.level -= n

    def credit(self, n: float) -> None:
        """Add back `n` units (negative: take more), never above a full bucket."""
        self.level = min(self.capacity, self.level + n)


class RateLimiter:
    """Requests/min and tokens/min limits (None: unlimited), and a shared pause after a 429."""

    def __init__(self, requests_per_min: float | None, tokens_per_min: float | None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.requests = TokenBucket(requests_per_min, clock) if requests_per_min else None
        self.tokens = TokenBucket(tokens_per_min, clock) if tokens_per_min else None
        self.clock, self.sleep = clock, sleep
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        """Block until one request of about `tokens` tokens may be sent, then count it."""
        while True:
            with self.lock:
                now = self.clock()
                wait = max(self.paused_until - now,
                           self.requests.wait_for(1, now) if self.requests else 0.0,
                           self.tokens.wait_for(tokens, now) if self.tokens else 0.0)
                if wait <= 0:
                    if self.requests:
                        self.requests.take(1)
                    if self.tokens:
                        self.tokens.take(tokens)
                    return
            self.sleep(min(wait, 1.0))

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the tokens counted for a request once its real usage is known."""
        if self.tokens and actual >= 0:
            with self.lock:
                self.tokens.credit(estimated - actual)

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_s: float = 1.0          # first wait; doubles per attempt, with jitter
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 300.0  # a longer Retry-After ends the row now (retried by the next run)

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def call_with_retries(send: Callable[[], T], limiter: RateLimiter, policy: RetryPolicy, tokens: int,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[T, int]:
    """(result, attempts). Retries `Transient` failures; raises GaveUp after the last attempt. Other
    exceptions pass through (the caller maps them to a row)."""
    attempt = 0
    while True:
        limiter.acquire(tokens)
        attempt += 1
        try:
            return send(), attempt
        except Transient as exc:
            if attempt >= policy.max_attempts:
                raise GaveUp(exc.code, f"{exc} (after {attempt} attempts)", attempt) from None
            wait = policy.backoff(attempt)
            if exc.retry_after is not None:
                if exc.retry_after > policy.max_retry_after_s:
                    raise GaveUp(exc.code, f"{exc}; Retry-After {exc.retry_after:.0f} s exceeds "
                                           f"max_retry_after_s {policy.max_retry_after_s:.0f}", attempt) from None
                wait = exc.retry_after + random.uniform(0, 0.1 * max(exc.retry_after, 0.1))
            if exc.code == "rate_limited":
                limiter.pause(wait)
            sleep(wait)
