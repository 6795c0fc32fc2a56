"""SQLite backend: one database file, shared by the threads and processes of one host.

WAL mode lets readers run beside the one writer; every chain write starts with
``BEGIN IMMEDIATE``, which takes the database's write lock up front (waiting up to the busy
timeout), so reading the head and writing the next event can never interleave with another
writer, in this process or another. ``synchronous=FULL``: a committed event survives a power
cut. Connections are pooled per process (one per concurrently active thread).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from broker.ledger.chain import Sealer
from broker.ledger.errors import LedgerUnavailable, SingleUseTaken
from broker.ledger.events import utc_timestamp
from broker.ledger.group import Item
from broker.ledger.rows import (
    SQL_HEAD,
    SQL_INSERT_EVENT,
    SQL_MOVE_HEAD,
    Params,
    Reader,
    Row,
    Transaction,
    json_text,
    statement_fingerprint,
)
from broker.ledger.schema import LATEST_VERSION, MIGRATIONS, SCHEMA_VERSION_DDL
from broker.ledger.store import Ledger

MIN_SQLITE = (3, 35, 0)   # UPDATE … RETURNING


@lru_cache(maxsize=256)
def _q(sql: str) -> str:
    """The shared SQL uses ``%s`` placeholders; sqlite3 wants ``?``."""
    return sql.replace("%s", "?")


class SQLiteLedger(Ledger):
    """The ledger in one SQLite file (the embedded default)."""

    _db_errors = (sqlite3.Error,)
    dialect = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError("the SQLite ledger needs SQLite >= 3.35"
                               f" (have {sqlite3.sqlite_version})")
        self.path = path
        self._busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        with self.unavailable_on_error("open"):
            with self._connection() as conn:
                self._migrate(conn)

    # -- connections -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
        # check_same_thread=False: a pooled connection moves between threads (one at a time).
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        # SQL's statement_fingerprint, for migration 10's backfill (PostgreSQL has sha256()).
        conn.create_function("nhb_fingerprint", 1, _fingerprint, deterministic=True)
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise LedgerUnavailable("the ledger is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        healthy = True
        try:
            yield conn
        except BaseException:
            healthy = _rollback(conn)
            raise
        finally:
            with self._lock:
                if healthy and not self._closed:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- schema ----------------------------------------------------------------------------
    def _migrate(self, conn: sqlite3.Connection) -> None:
        # journal_mode is a property of the file; it cannot change inside a transaction.
        _set_wal(conn, self._busy_timeout)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(SCHEMA_VERSION_DDL)
        current = conn.execute(
            "SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
        if current > LATEST_VERSION:
            raise LedgerUnavailable(f"ledger schema version {current} is newer than this broker"
                                    f" supports ({LATEST_VERSION})")
        # Each version not yet recorded, in version order (so a version merged later than a
        # higher one is still applied).
        applied = {int(v) for (v,) in conn.execute("SELECT version FROM schema_version").fetchall()}
        for migration in sorted(MIGRATIONS, key=lambda m: m.version):
            if migration.version in applied:
                continue
            for sql, params in migration.statements("sqlite"):
                conn.execute(_q(sql), params)
            conn.execute("INSERT INTO schema_version (version, description, applied_at)"
                         " VALUES (?, ?, ?)",
                         (migration.version, migration.description, utc_timestamp()))
        conn.execute("COMMIT")

    # -- primitives ------------------------------------------------------------------------
    def read(self, sql: str, params: Params = ()) -> list[Row]:
        with self._connection() as conn:
            return conn.execute(_q(sql), tuple(params)).fetchall()

    def _commit_items(self, items: list[Item]) -> None:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            head_seq, prev_hash, head_ts = conn.execute(SQL_HEAD).fetchall()[0]
            seq = int(head_seq)
            # ts never goes below the head's (clock skew between hosts): time order is seq order
            ts = max(utc_timestamp(), head_ts)
            sealer = Sealer()
            written = False
            for item in items:
                item.event = item.error = None
                if item.claim is not None and not conn.execute(_q(item.claim[0]), item.claim[1]).fetchall():
                    item.error = SingleUseTaken(item.draft.credential_id or "")
                    continue
                if item.guard is not None and not conn.execute(_q(item.guard[0]), item.guard[1]).fetchall():
                    if item.unclaim is not None:
                        conn.execute(_q(item.unclaim[0]), item.unclaim[1])
                    continue
                seq += 1
                event, params = sealer.seal(item.draft, seq=seq, ts=ts, prev_hash=prev_hash)
                prev_hash = event.hash
                conn.execute(_q(SQL_INSERT_EVENT), params)
                for sql, extra_params in item.extra:
                    conn.execute(_q(sql), extra_params)
                item.event = event
                written = True
            if written:
                conn.execute(_q(SQL_MOVE_HEAD), (seq, prev_hash, ts))
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")

    def _merge_details(self, credential_id: str, details: dict[str, Any]) -> bool:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute("SELECT details FROM credentials WHERE credential_id = ?",
                                (credential_id,)).fetchall()
            if not rows:
                conn.execute("ROLLBACK")
                return False
            merged = {**json.loads(rows[0][0]), **details}
            conn.execute("UPDATE credentials SET details = ? WHERE credential_id = ?",
                         (json_text(merged), credential_id))
            conn.execute("COMMIT")
            return True

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        with self._connection() as conn:
            # A deferred transaction: the first SELECT fixes the WAL snapshot for all others.
            conn.execute("BEGIN")

            def read(sql: str, params: Params) -> list[Row]:
                return conn.execute(_q(sql), tuple(params)).fetchall()

            yield read
            conn.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield _SQLiteTransaction(conn)
            conn.execute("COMMIT")


class _SQLiteTransaction:
    """:class:`~broker.ledger.store.Transaction` on one SQLite connection."""

    lock_suffix = ""     # BEGIN IMMEDIATE already holds the database's write lock

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> list[Row]:
        return self._conn.execute(_q(sql), tuple(params)).fetchall()

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._conn.executemany(_q(sql), rows)

    def insert_rows(self, table: str, columns: Sequence[str], sql_text: str,
                    rows: Sequence[Params]) -> None:
        self._conn.executemany(_q(sql_text), rows)


def _fingerprint(statement: str | None) -> str | None:
    return None if statement is None else statement_fingerprint(statement)


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried: while another process holds the lock to create
    the schema in a fresh file, SQLite answers "database is locked" at once instead of
    waiting for the busy timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _rollback(conn: sqlite3.Connection) -> bool:
    """End any open transaction after a failure; False if the connection is unusable."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return True
    except sqlite3.Error:
        return False
