"""Replay guard: an attestation is accepted once, however many broker processes see it.

Two operations: :meth:`ReplayGuard.first_use`, True the first time a key is seen within its
ttl and False afterwards; and :meth:`ReplayGuard.release`, which forgets a key whose exchange
then failed having issued nothing (a dependency was down), so the same attestation can be
retried. The verifier calls it last, with ``{issuer}:jti:{jti}`` (or, without a
``jti``, ``{issuer}:claims:<SHA-256 of the signed claims in canonical JSON>``: see
:func:`broker.attestation.verify.single_use_key`) and a ttl that outlives the window in which the token could
still be accepted.

- :class:`RedisReplayGuard` (production, shared by every broker host): one atomic
  ``SET key 1 NX EX ttl``.
- :class:`SQLiteReplayGuard` (embedded default): the same semantics for every process on one
  host sharing one file -- an ``INSERT`` that succeeds only if the key is absent or expired,
  inside one ``BEGIN IMMEDIATE`` transaction.

Both fail closed: a store that cannot answer raises :class:`ReplayStoreUnavailable`.

This is the fast path only. Single use is anchored in the ledger (the ``attestation_uses``
table, claimed in the mint's own transaction: :meth:`broker.ledger.Ledger.record_mint`), so
losing this store's memory (a Redis restart without persistence) cannot re-enable a used
attestation.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from typing import Protocol, runtime_checkable

from broker.errors import BackendUnavailable

_MAX_PLAIN_KEY = 200   # longer keys (a huge jti) are stored by their SHA-256


@runtime_checkable
class ReplayGuard(Protocol):
    def first_use(self, key: str, ttl_seconds: int) -> bool:
        """True the first time ``key`` is seen within ``ttl_seconds``; False on a replay."""
        ...

    def release(self, key: str) -> None:
        """Forget ``key`` (its exchange failed having issued nothing). Best effort: a store
        that cannot answer leaves the key claimed (the client's retry is then refused as a
        replay, never granted twice)."""
        ...


class ReplayStoreUnavailable(BackendUnavailable):
    """The replay store cannot answer; the broker refuses rather than risk a replay."""

    def __init__(self, detail: str) -> None:
        super().__init__("the replay store is temporarily unavailable", detail=detail)


def _store_key(prefix: str, key: str) -> str:
    if len(key) <= _MAX_PLAIN_KEY:
        return prefix + key
    return prefix + "#sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _ttl(ttl_seconds: int) -> int:
    return max(1, int(ttl_seconds))


class RedisReplayGuard:
    """Replay guard on Redis: ``SET <prefix><key> 1 NX EX <ttl>``; one round trip, atomic."""

    def __init__(self, url: str, *, prefix: str = "nhb:replay:",
                 socket_timeout: float = 0.5) -> None:
        # socket_timeout: BROKER_REDIS_TIMEOUT, for connecting and for each answer
        try:
            import redis
        except ImportError as exc:  # the embedded install has no redis client
            raise RuntimeError("RedisReplayGuard needs the 'redis' extra: "
                               "pip install 'nhi-broker[redis]'") from exc
        self._errors = (redis.RedisError, OSError)
        self.prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            retry_on_timeout=False,
        )

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        try:
            created = self._client.set(_store_key(self.prefix, key), b"1", nx=True,
                                       ex=_ttl(ttl_seconds))
        except self._errors as exc:
            # The exception text may carry host details; the URL (and its password) never.
            raise ReplayStoreUnavailable(
                f"replay store (redis) failed: {exc.__class__.__name__}") from exc
        return bool(created)

    def release(self, key: str) -> None:
        try:
            self._client.delete(_store_key(self.prefix, key))
        except self._errors:
            pass          # still claimed: a retry is refused as a replay, never granted twice

    def close(self) -> None:
        self._client.close()


class SQLiteReplayGuard:
    """Replay guard in one SQLite file, safe for several processes (and threads) on one host.

    ``first_use`` runs one ``BEGIN IMMEDIATE`` transaction (a write lock taken up front, so two
    processes cannot both see the key absent): insert the key, or take over an expired row;
    ``rowcount`` tells whether this call won. Expired rows are purged every
    ``purge_every`` calls per connection.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 5000,
                 purge_every: int = 256) -> None:
        self.path = os.fspath(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.purge_every = purge_every
        self._local = threading.local()
        self._connect()  # fail at start-up, not on the first request

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        # A connection never crosses a fork or a thread: each gets its own.
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS replay ("
                " key TEXT PRIMARY KEY,"
                " expires_at REAL NOT NULL"
                ") WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            raise ReplayStoreUnavailable(
                f"replay store (sqlite) cannot open: {exc.__class__.__name__}") from exc
        self._local.conn, self._local.pid, self._local.calls = conn, os.getpid(), 0
        return conn

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        conn = self._connect()
        now = time.time()
        stored = _store_key("", key)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO replay (key, expires_at) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
                    " WHERE replay.expires_at <= ?",
                    (stored, now + _ttl(ttl_seconds), now),
                )
                first = cursor.rowcount == 1
                self._local.calls += 1
                if self._local.calls % self.purge_every == 0:
                    self._purge(conn, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ReplayStoreUnavailable(
                f"replay store (sqlite) failed: {exc.__class__.__name__}") from exc
        return first

    def release(self, key: str) -> None:
        conn = self._connect()
        try:
            conn.execute("DELETE FROM replay WHERE key = ?", (_store_key("", key),))
        except sqlite3.Error:
            pass          # still claimed: a retry is refused as a replay, never granted twice

    def purge_expired(self) -> int:
        """Delete expired rows now; returns how many went."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._purge(conn, time.time())
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ReplayStoreUnavailable(
                f"replay store (sqlite) failed: {exc.__class__.__name__}") from exc
        return deleted

    @staticmethod
    def _purge(conn: sqlite3.Connection, now: float, limit: int = 10_000) -> int:
        cursor = conn.execute(
            "DELETE FROM replay WHERE key IN"
            " (SELECT key FROM replay WHERE expires_at <= ? LIMIT ?)", (now, limit))
        return cursor.rowcount

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def open_replay_guard(redis_url: str | None, state_dir: str, *,
                      redis_timeout: float = 0.5) -> ReplayGuard:
    """Redis when a URL is configured (``redis_timeout``: BROKER_REDIS_TIMEOUT), else
    ``{state_dir}/replay.sqlite3``."""
    if redis_url:
        return RedisReplayGuard(redis_url, socket_timeout=redis_timeout)
    os.makedirs(state_dir, exist_ok=True)
    return SQLiteReplayGuard(os.path.join(state_dir, "replay.sqlite3"))
