"""Rate limits on ``POST /token`` per client address (``BROKER_RATE_LIMIT=N/period``).

Off unless configured. A request over the limit is answered ``429`` with the RFC 8628-style
``{"error": "slow_down"}`` and a ``Retry-After`` header, *before* attestation checking: a
flood of garbage tokens costs neither a signature check nor a ledger event (the rejections are
logged, sampled). Windows are fixed (``now // period``), counted in Redis when
``BROKER_REDIS_URL`` is set (``INCR`` + ``EXPIRE`` in one round trip, shared by every broker
host) and otherwise in a SQLite file in the state directory shared by the workers of one host.
A counter store that cannot answer fails closed (``503 temporarily_unavailable``), like the
replay store.

The client address is ``request.remote_addr``; behind a reverse proxy set
``BROKER_PROXY_FIX_X_FOR`` to the number of proxies whose ``X-Forwarded-For`` to trust.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from broker.errors import BackendUnavailable, RateLimited

log = logging.getLogger("broker.http.ratelimit")

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)?\s*([smh]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Limit:
    requests: int
    period: int      # seconds

    @classmethod
    def parse(cls, spec: str) -> Limit:
        """``"600/60s"``, ``"50/s"``, ``"1000/1m"``."""
        m = _SPEC.match(spec)
        if not m or int(m.group(1)) <= 0:
            raise ValueError(f"BROKER_RATE_LIMIT must look like 600/60s or 50/s, not {spec!r}")
        period = int(m.group(2) or 1) * _UNIT[m.group(3)]
        if period <= 0:
            raise ValueError(f"BROKER_RATE_LIMIT period must be positive: {spec!r}")
        return cls(int(m.group(1)), period)


class Counter(Protocol):
    def hit(self, key: str, window: int, ttl: int) -> int:
        """Count one request in ``(key, window)``; return the count so far."""
        ...

    def peek(self, key: str, window: int) -> int:
        """The count in ``(key, window)`` without adding to it."""
        ...


class RedisCounter:
    def __init__(self, url: str, *, prefix: str = "nhb:rl:", socket_timeout: float = 0.5) -> None:
        import redis

        self._errors = (redis.RedisError, OSError)
        self._prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                            socket_connect_timeout=socket_timeout)

    def hit(self, key: str, window: int, ttl: int) -> int:
        name = f"{self._prefix}{key}:{window}"
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(name)
            pipe.expire(name, ttl)
            count, _ = pipe.execute()
        except self._errors as exc:
            raise BackendUnavailable(
                "rate-limit store unavailable",
                detail=f"rate-limit store (redis) failed: {type(exc).__name__}") from exc
        return int(count)

    def peek(self, key: str, window: int) -> int:
        try:
            value = self._client.get(f"{self._prefix}{key}:{window}")
        except self._errors as exc:
            raise BackendUnavailable("rate-limit store unavailable",
                                     detail=f"rate-limit store (redis) failed: {type(exc).__name__}") from exc
        return int(value or 0)


class SQLiteCounter:
    """The embedded store: one row per (key, window) in a file shared by a host's workers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS hits (key TEXT, window INTEGER, count INTEGER,"
                         " expires_at REAL, PRIMARY KEY (key, window)) WITHOUT ROWID")
            self._local.conn, self._local.pid, self._local.calls = conn, os.getpid(), 0
        return conn

    def hit(self, key: str, window: int, ttl: int) -> int:
        try:
            conn = self._conn()
            now = time.time()
            row = conn.execute(
                "INSERT INTO hits (key, window, count, expires_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (key, window) DO UPDATE SET count = count + 1 RETURNING count",
                (key, window, now + ttl)).fetchone()
            self._local.calls += 1
            if self._local.calls % 512 == 0:
                conn.execute("DELETE FROM hits WHERE expires_at < ?", (now,))
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                "rate-limit store unavailable",
                detail=f"rate-limit store (sqlite) failed: {type(exc).__name__}") from exc
        return int(row[0])

    def peek(self, key: str, window: int) -> int:
        try:
            row = self._conn().execute("SELECT count FROM hits WHERE key = ? AND window = ?",
                                       (key, window)).fetchone()
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                "rate-limit store unavailable",
                detail=f"rate-limit store (sqlite) failed: {type(exc).__name__}") from exc
        return int(row[0]) if row else 0


class RateLimiter:
    def __init__(self, limit: Limit, counter: Counter) -> None:
        self.limit = limit
        self.counter = counter
        self._refused = 0

    def check(self, address: str, *, now: float | None = None) -> None:
        """Raise :class:`~broker.errors.RateLimited` when ``address`` is over the limit in this window."""
        now = time.time() if now is None else now
        window = int(now // self.limit.period)
        count = self.counter.hit(address, window, self.limit.period + 1)
        if count > self.limit.requests:
            self._refused += 1
            if self._refused % 100 == 1:      # sampled: a flood must not flood the log
                log.warning("rate limit: %s over %d/%ds (%d refused by this process)",
                            address, self.limit.requests, self.limit.period, self._refused)
            retry_after = max(1, int((window + 1) * self.limit.period - now) + 1)
            raise RateLimited("too many requests; retry later", retry_after=retry_after,
                              detail=f"rate limit {self.limit.requests}/{self.limit.period}s exceeded")


class FailureLimiter:
    """Refused client authentication, counted per client address: after ``limit.requests``
    failures in a window, every authentication attempt from that address (a right secret too)
    is refused ``429`` until the window ends. Guessing a client secret is slow, and each guess
    before that is a ledger event (:mod:`broker.http.api.oauth`)."""

    def __init__(self, limit: Limit, counter: Counter) -> None:
        self.limit = limit
        self.counter = counter
        self._refused = 0

    def check(self, address: str, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        window = int(now // self.limit.period)
        if self.counter.peek(address, window) >= self.limit.requests:
            self._refused += 1
            if self._refused % 100 == 1:
                log.warning("client authentication locked for %s: %d failures in %ds "
                            "(%d refused by this process)", address, self.limit.requests,
                            self.limit.period, self._refused)
            retry_after = max(1, int((window + 1) * self.limit.period - now) + 1)
            raise RateLimited("too many failed client authentications; retry later",
                              retry_after=retry_after,
                              detail=f"client authentication failures over "
                                     f"{self.limit.requests}/{self.limit.period}s")

    def failed(self, address: str, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        window = int(now // self.limit.period)
        self.counter.hit(address, window, self.limit.period + 1)


#: ``BROKER_CLIENT_AUTH_FAILURE_LIMIT`` when unset: 10 refused authentications a minute per
#: client address.
DEFAULT_CLIENT_AUTH_FAILURE_LIMIT = "10/60s"


def open_failure_limiter(spec: str | None, *, redis_url: str | None, state_dir: str,
                         redis_timeout: float = 0.5) -> FailureLimiter | None:
    """``spec`` like ``BROKER_RATE_LIMIT`` (``off`` or ``0`` disables it); counted in Redis
    (``nhb:authfail:``) when configured, else in the state directory's SQLite file."""
    spec = DEFAULT_CLIENT_AUTH_FAILURE_LIMIT if spec is None else str(spec)
    if spec.strip().lower() in ("", "0", "off", "none"):
        return None
    limit = Limit.parse(spec)
    counter: Counter = (RedisCounter(redis_url, prefix="nhb:authfail:", socket_timeout=redis_timeout)
                        if redis_url
                        else SQLiteCounter(os.path.join(state_dir, "authfail.sqlite3")))
    return FailureLimiter(limit, counter)


def open_rate_limiter(spec: str | None, *, redis_url: str | None, state_dir: str,
                      redis_timeout: float = 0.5) -> RateLimiter | None:
    """``BROKER_RATE_LIMIT``; counted in Redis (``redis_timeout``: BROKER_REDIS_TIMEOUT) when
    configured, else in the state directory's SQLite file."""
    if not spec:
        return None
    limit = Limit.parse(str(spec))
    counter: Counter = (RedisCounter(redis_url, socket_timeout=redis_timeout) if redis_url
                        else SQLiteCounter(os.path.join(state_dir, "ratelimit.sqlite3")))
    return RateLimiter(limit, counter)
