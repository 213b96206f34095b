"""Reliability strategies of the request loop: rate limit, retry policy, circuit breaker, deadline.

* Retries use tenacity (exponential backoff with full jitter via ``wait_random_exponential``) and
  urllib3's ``Retry.parse_retry_after`` for both forms of ``Retry-After``. urllib3's ``Retry`` is not
  used as the transport-level policy because the loop needs each retry in its metrics, the breaker
  to see each failed attempt, and the window's deadline to bound every wait.
* The circuit breaker is pybreaker's, one per host and process.
* The token bucket is written here: it is twenty lines, and the pinned dependency set has no rate
  limiter (pyrate-limiter would be a new dependency for the same arithmetic).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pybreaker
from urllib3.util import Retry

from driftless.errors import SourceError


class TransientError(Exception):
    """A failed attempt worth retrying (connection error, timeout, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None, host_failure: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # 429 says "slow down", not "I am broken": it does not count towards the breaker.
        self.host_failure = host_failure


class DeadlineExceeded(SourceError):
    """The window's overall deadline passed."""


class BreakerOpen(SourceError):
    """The host's circuit breaker is open: requests fail fast until its cool-down ends."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (past dates give 0)."""
    if not value:
        return None
    try:
        return max(0.0, float(Retry().parse_retry_after(value.strip())))
    except Exception:  # urllib3 raises InvalidHeader on garbage; a bad header means "no advice"
        return None


class TokenBucket:
    """At most ``rate`` requests per second on average, and at most ``burst`` back to back.

    ``acquire()`` blocks until a token is available and returns how long it waited. Thread-safe.
    """

    def __init__(self, rate: float, burst: int = 1, clock=time.monotonic, sleep=time.sleep) -> None:
        self.rate, self.capacity = float(rate), float(burst)
        self.tokens = float(burst)
        self.clock, self.sleep = clock, sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self) -> float:
        waited = 0.0
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return waited
                delay = (1.0 - self.tokens) / self.rate
            self.sleep(delay)
            waited += delay


_breakers: dict[tuple[str, int, float], pybreaker.CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(host: str, failures: int, cooldown: float) -> pybreaker.CircuitBreaker:
    """The circuit breaker of ``host`` (``scheme://host:port``), shared by every client of this process.

    It counts consecutive failed attempts (connection errors, timeouts, 5xx); after ``failures`` it
    opens and calls fail fast; after ``cooldown`` seconds one probe goes through (half-open), whose
    success closes it again.
    """
    key = (host, failures, cooldown)
    with _breakers_lock:
        breaker = _breakers.get(key)
        if breaker is None:
            breaker = pybreaker.CircuitBreaker(
                fail_max=failures,
                reset_timeout=cooldown,
                exclude=[lambda exc: not (isinstance(exc, TransientError) and exc.host_failure)],
                name=host,
                throw_new_error_on_trip=False,
            )
            _breakers[key] = breaker
        return breaker


def reset_breakers() -> None:
    """Forget every breaker (tests; a long-lived process that wants a clean slate)."""
    with _breakers_lock:
        _breakers.clear()


@dataclass
class Metrics:
    """What the request loop did in one window; ``as_dict()`` goes to the manifest, summary and run record."""

    requests: int = 0
    retries: int = 0
    retry_wait_s: float = 0.0
    throttled_waits: int = 0
    throttled_wait_s: float = 0.0
    breaker_trips: int = 0
    token_requests: int = 0
    pages: int = 0
    records: int = 0
    bytes: int = 0
    status: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    total: int | None = None  # the record count the API announced (``source.total``)

    def response(self, status: int | None, latency: float, size: int) -> None:
        key = str(status) if status is not None else "error"
        self.status[key] = self.status.get(key, 0) + 1
        self.latencies.append(latency)
        self.bytes += size

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            # Nearest-rank percentile: exact on small samples, no interpolation surprises.
            return round(lat[min(len(lat) - 1, max(0, int(-(-p * len(lat) // 100)) - 1))] * 1000, 2)

        return {
            "requests": self.requests,
            "retries": self.retries,
            "retry_wait_s": round(self.retry_wait_s, 3),
            "throttled_waits": self.throttled_waits,
            "throttled_wait_s": round(self.throttled_wait_s, 3),
            "breaker_trips": self.breaker_trips,
            "token_requests": self.token_requests,
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)},
            "pages": self.pages,
            "records": self.records,
            **({"total": self.total} if self.total is not None else {}),  # only with source.total
            "bytes": self.bytes,
            "status": dict(sorted(self.status.items())),
        }
