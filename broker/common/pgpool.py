"""A PostgreSQL connection pool that behaves when its server goes away and comes back.

:class:`GuardedPool` wraps :class:`psycopg_pool.ConnectionPool` (the ledger's and each
``postgres`` target's admin pool) with the three promises of docs/operations.md:

- **one bounded wait**: a request waits at most ``timeout`` seconds for a connection, once;
  when that fails (or a connection is lost), the server is marked *down*;
- **fast while down**: every further request fails at once with :class:`ServerDown` (a
  :class:`~psycopg_pool.PoolTimeout`), except one *probe* per ``probe_interval`` that tries a
  fresh connection (``connect_timeout`` 2 s, libpq's minimum; a refused connection fails in
  microseconds);
- **the first request after recovery succeeds**: when a probe connects, the old pool (whose
  connections all died with the server, and whose reconnect back-off may still be waiting) is
  replaced by a fresh one, and the probing request runs on it. A pool that still holds a sound
  idle connection (it was only busy: a load spike on a healthy server) is kept. Connections are validated when
  taken from the pool (``check``), so a connection broken by a restart is never handed out.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

#: Seconds between probes of a server marked down (per pool, per process).
PROBE_INTERVAL = 0.25


class ServerDown(PoolTimeout):
    """The pool's server is marked down and was not probed again yet (or the probe failed)."""


class GuardedPool:
    """``connection()`` like :meth:`ConnectionPool.connection`, with the module's promises."""

    def __init__(self, conninfo: str, *, name: str, min_size: int, max_size: int,
                 timeout: float, kwargs: dict[str, Any],
                 configure: Callable[[psycopg.Connection[Any]], None] | None = None,
                 check: Callable[[psycopg.Connection[Any]], None] | None = None,
                 probe_interval: float = PROBE_INTERVAL) -> None:
        self._conninfo = conninfo
        self._options: dict[str, Any] = {
            "name": name, "min_size": min_size, "max_size": max_size, "timeout": timeout,
            "kwargs": kwargs, "configure": configure,
            "check": check if check is not None else ConnectionPool.check_connection,
            "reconnect_timeout": 60}
        self.timeout = timeout
        self.max_size = max_size
        self.probe_interval = probe_interval
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_probe = 0.0
        self._closed = False
        self._pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(self._conninfo, open=False, **self._options)

    def open(self, *, wait: bool = False, timeout: float = 30.0) -> None:
        self._pool.open(wait=wait, timeout=timeout)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._down_since is not None:
            self._probe()
        pool = self._pool
        try:
            with pool.connection(timeout=self.timeout) as conn:
                yield conn
        except PoolTimeout:
            self._mark_down()
            raise
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None:      # connection-level: the server hung up or is gone
                self._mark_down()
            raise

    def _mark_down(self) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._last_probe = time.monotonic()

    def _probe(self) -> None:
        """Raise :class:`ServerDown` unless this request may probe and the probe connects; on
        success, replace the pool (see the module docstring) and mark the server up."""
        with self._lock:
            if self._down_since is None:
                return
            clock = time.monotonic()
            if clock - self._last_probe < self.probe_interval:
                raise ServerDown("the database is down (not probed again yet)")
            self._last_probe = clock
        kwargs = {k: v for k, v in self._options["kwargs"].items() if k != "connect_timeout"}
        try:
            psycopg.connect(self._conninfo, connect_timeout=2, **kwargs).close()
        except psycopg.Error:
            raise ServerDown("the database is down (probe failed)") from None
        # A pool that still has a sound idle connection was only busy (a load spike on a
        # healthy server): keep it. Otherwise its connections died with the server.
        self._pool.check()
        sound = self._pool.get_stats().get("pool_available", 0) > 0
        with self._lock:
            if self._down_since is None or self._closed:
                return                    # another thread recovered it first
            self._down_since = None
            if sound:
                return
            old, self._pool = self._pool, self._new_pool()
            self._pool.open(wait=False)
        threading.Thread(target=old.close, kwargs={"timeout": 2}, daemon=True,
                         name="pgpool-retire").start()

    def check(self) -> None:
        self._pool.check()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
        self._pool.close(timeout=timeout)
