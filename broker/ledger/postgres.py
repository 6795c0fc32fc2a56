"""PostgreSQL backend: one chain shared by every broker process on every host.

A chain write is one transaction that locks the single ``ledger_head`` row with
``SELECT … FOR UPDATE``; concurrent writers queue on that row lock, so each one reads the head
the previous one committed. The transaction is sent in pipeline mode, in two round trips after
the pool's connection check (only for a connection idle for a while): ``BEGIN`` + head lock
(+ guard), then insert event + move head (+ extra) + ``COMMIT``. The lock is therefore held
for about one round trip plus the commit.

Connections come from a small :class:`psycopg_pool.ConnectionPool` per process (autocommit,
so a read is a single round trip; writes open their transaction explicitly).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from broker.common.pgpool import GuardedPool
from broker.ledger.chain import Sealer
from broker.ledger.errors import LedgerUnavailable, SingleUseTaken
from broker.ledger.events import utc_timestamp
from broker.ledger.group import Item
from broker.ledger.rows import (
    CREDENTIAL_INSERT_COLUMNS,
    EVENT_INSERT_COLUMNS,
    LINEAGE_COLUMNS,
    SQL_CLAIM_SINGLE_USE,
    SQL_HEAD,
    SQL_INSERT_CREDENTIAL,
    SQL_INSERT_EVENT,
    SQL_INSERT_LINEAGE,
    SQL_MOVE_HEAD,
    Params,
    Reader,
    Row,
    Transaction,
    json_text,
)
from broker.ledger.schema import LATEST_VERSION, MIGRATIONS, PG_SCHEMA_LOCK_KEY, SCHEMA_VERSION_DDL
from broker.ledger.store import Ledger

SQL_HEAD_FOR_UPDATE = SQL_HEAD + " FOR UPDATE"
#: Every single-use claim of a batch in one statement (SQL_CLAIM_SINGLE_USE for many keys; the
#: keys are distinct, a repeat within the batch is refused before it is sent). A lapsed claim is
#: taken over only if it lapsed before the batch's earliest moment: never later than any item's
#: own check would allow.
SQL_CLAIM_MANY = (
    "INSERT INTO attestation_uses (key_sha256, expires_at, credential_id)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[])"
    " ON CONFLICT (key_sha256) DO UPDATE"
    " SET expires_at = excluded.expires_at, credential_id = excluded.credential_id"
    " WHERE attestation_uses.expires_at < %s RETURNING key_sha256"
)
#: A batch of at least this many items, none with a guard, is written with COPY (see
#: PostgresLedger._commit_copy); smaller ones as one INSERT each in pipeline mode, which takes
#: fewer round trips for one or two events.
COPY_BATCH = 8

#: A pooled connection unused for longer than this is pinged before use; busy ones are not
#: (a ping per request would add a round trip to every append).
IDLE_CHECK_SECONDS = 5.0


class _LostBeforeCommit(Exception):
    """The connection broke before COMMIT was sent (internal: triggers one retry)."""


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    now = time.monotonic()
    if now - getattr(conn, "_nhb_checked_at", 0.0) > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(conn)
    conn._nhb_checked_at = now  # type: ignore[attr-defined]


class PostgresLedger(Ledger):
    """The ledger in a PostgreSQL database (production: many processes, one chain)."""

    _db_errors = (psycopg.Error,)   # includes psycopg_pool's PoolTimeout and PoolClosed
    dialect = "postgres"            # arrays and LATERAL for stores with their own SQL

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 1.0) -> None:
        try:
            conninfo_to_dict(url)
        except psycopg.Error:
            # libpq's message quotes the whole URL, password included: drop it entirely.
            raise ValueError("malformed PostgreSQL ledger URL") from None
        # One bounded wait, fast refusals while the database is down, a fresh pool once it is
        # back (broker/common/pgpool.py).
        self._pool = GuardedPool(
            url,
            min_size=1,
            max_size=max(1, int(pool_size)),
            timeout=timeout,                       # waiting for a free connection, once
            kwargs={"autocommit": True, "connect_timeout": max(2, int(timeout))},
            check=_check_if_idle,                   # drop connections broken by a restart
            name="nhi-broker-ledger",
        )
        self._pool.open(wait=False)
        try:
            with self.unavailable_on_error("open"):
                self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    # -- schema ----------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            # Released at commit; serializes schema creation across processes and hosts.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PG_SCHEMA_LOCK_KEY,))
            conn.execute(SCHEMA_VERSION_DDL)
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > LATEST_VERSION:
                raise LedgerUnavailable(f"ledger schema version {current} is newer than this"
                                        f" broker supports ({LATEST_VERSION})")
            # Each version not yet recorded, in version order (so a version merged later than a
            # higher one is still applied).
            applied = {int(v) for (v,) in conn.execute("SELECT version FROM schema_version").fetchall()}
            for migration in sorted(MIGRATIONS, key=lambda m: m.version):
                if migration.version in applied:
                    continue
                for sql, params in migration.statements("postgres"):
                    conn.execute(sql, params or None)
                conn.execute("INSERT INTO schema_version (version, description, applied_at)"
                             " VALUES (%s, %s, %s)",
                             (migration.version, migration.description, utc_timestamp()))

    # -- primitives ------------------------------------------------------------------------
    def read(self, sql: str, params: Params = ()) -> list[Row]:
        attempts = self._pool.max_size + 1
        for attempt in range(1, attempts + 1):
            with self._pool.connection() as conn:
                try:
                    return conn.execute(sql, tuple(params) or None).fetchall()
                except psycopg.OperationalError:
                    # A pooled connection the server dropped (restart, failover): the pool
                    # discards it on return; a read is safe to retry on a fresh one.
                    if attempt == attempts:
                        raise
        raise AssertionError("unreachable")

    def _commit_items(self, items: list[Item]) -> None:
        attempts = self._pool.max_size + 1     # every pooled connection may be dead at once
        for attempt in range(1, attempts + 1):
            try:
                return self._commit_once(items)
            except _LostBeforeCommit as lost:
                # The connection was dead before anything was committed: retrying on a
                # fresh connection cannot duplicate the events.
                if attempt == attempts:
                    raise lost.__cause__ from None  # type: ignore[misc]
        raise AssertionError("unreachable")

    def _commit_once(self, items: list[Item]) -> None:
        if len(items) >= COPY_BATCH and all(
                item.guard is None and (item.claim is None or item.claim[0] == SQL_CLAIM_SINGLE_USE)
                for item in items):
            return self._commit_copy(items)
        # Explicit BEGIN/COMMIT in pipeline mode measured cheaper than conn.transaction().
        # Round trips: BEGIN + head lock (+ the first guard); one more per further guarded item
        # (its answer decides whether the item is written); the inserts and COMMIT. On any
        # error the pool's connection context rolls back (or discards a broken one).
        with self._pool.connection() as conn:
            with conn.pipeline():
                first = items[0]
                # The first item's claim (else its guard) rides with the head lock's round trip.
                first_check = first.claim if first.claim is not None else first.guard
                try:
                    conn.execute("BEGIN")
                    head_cursor = conn.execute(SQL_HEAD_FOR_UPDATE)
                    first_cursor = (conn.execute(first_check[0], first_check[1])
                                    if first_check is not None else None)
                    head = head_cursor.fetchone()      # round trip: BEGIN, lock (, claim/guard)
                except psycopg.OperationalError as exc:
                    # Nothing was committed yet (COMMIT is not sent): safe to retry.
                    raise _LostBeforeCommit() from exc
                if head is None:
                    raise LedgerUnavailable("ledger_head row is missing")
                seq, prev_hash, head_ts = int(head[0]), head[1], head[2]
                ts = max(utc_timestamp(), head_ts)     # never below the head's: time order is seq order
                sealer = Sealer()
                written = False
                for index, item in enumerate(items):
                    item.event = item.error = None     # a retried batch starts afresh
                    if item.claim is not None:
                        claim_cursor = (first_cursor if index == 0
                                        else conn.execute(item.claim[0], item.claim[1]))
                        assert claim_cursor is not None
                        if claim_cursor.fetchone() is None:
                            item.error = SingleUseTaken(item.draft.credential_id or "")
                            continue
                    if item.guard is not None:
                        guard_cursor = (first_cursor if index == 0 and item.claim is None
                                        else conn.execute(item.guard[0], item.guard[1]))
                        assert guard_cursor is not None
                        if guard_cursor.fetchone() is None:
                            if item.unclaim is not None:
                                conn.execute(item.unclaim[0], item.unclaim[1])
                            continue                   # nothing to do for this one
                    seq += 1
                    event, params = sealer.seal(item.draft, seq=seq, ts=ts, prev_hash=prev_hash)
                    prev_hash = event.hash
                    conn.execute(SQL_INSERT_EVENT, params)
                    for sql, extra_params in item.extra:
                        conn.execute(sql, extra_params)
                    item.event = event
                    written = True
                if written:
                    conn.execute(SQL_MOVE_HEAD, (seq, prev_hash, ts))
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")
            # leaving the pipeline synced: the last round trip, which waits for the commit

    def _commit_copy(self, items: list[Item]) -> None:
        """A large guard-free batch (group commit under load): one round trip for ``BEGIN``, the
        head lock and every item's single-use claim (one statement), then the sealed events,
        credential rows and root lineage rows with ``COPY`` (a few microseconds of driver work
        per row instead of tens for an INSERT each), the remaining extra statements in item
        order, the head and ``COMMIT``. Same outcome as the one-by-one path: an item whose
        attestation is already used (before, or by an earlier item of this batch) gets
        SingleUseTaken and writes nothing; without guards no item's outcome depends on another's
        extra statements."""
        claimants: dict[str, int] = {}        # key_sha256 -> the first item claiming it
        repeats: set[int] = set()
        for index, item in enumerate(items):
            item.event = item.error = None     # a retried batch starts afresh
            if item.claim is not None:
                key = item.claim[1][0]
                if key in claimants:
                    repeats.add(index)
                else:
                    claimants[key] = index
        with self._pool.connection() as conn:
            with conn.pipeline():
                try:
                    conn.execute("BEGIN")
                    head_cursor = conn.execute(SQL_HEAD_FOR_UPDATE)
                    claim_cursor = None
                    if claimants:
                        claims = [items[index].claim[1] for index in claimants.values()]  # type: ignore[index]
                        claim_cursor = conn.execute(SQL_CLAIM_MANY, (
                            [c[0] for c in claims], [int(c[1]) for c in claims],
                            [c[2] for c in claims], min(int(c[3]) for c in claims)))
                    head = head_cursor.fetchone()      # round trip: BEGIN, lock, claims
                    claimed = ({row[0] for row in claim_cursor.fetchall()}
                               if claim_cursor is not None else set())
                except psycopg.OperationalError as exc:
                    raise _LostBeforeCommit() from exc  # nothing committed: safe to retry
            if head is None:
                raise LedgerUnavailable("ledger_head row is missing")
            seq, prev_hash, head_ts = int(head[0]), head[1], head[2]
            ts = max(utc_timestamp(), head_ts)
            seq, prev_hash, batch = _seal_for_copy(items, claimed, repeats, seq=seq,
                                                   prev_hash=prev_hash, ts=ts)
            event_rows, credential_rows, lineage_rows, statements = batch
            if not event_rows:
                conn.execute("ROLLBACK")
                return
            with conn.cursor() as cursor:
                for table, columns, rows in (("events", EVENT_INSERT_COLUMNS, event_rows),
                                             ("credentials", CREDENTIAL_INSERT_COLUMNS, credential_rows),
                                             ("credential_lineage", LINEAGE_COLUMNS, lineage_rows)):
                    if rows:
                        _copy_rows(cursor, table, columns, rows)
            with conn.pipeline():
                for sql, extra_params in statements:
                    conn.execute(sql, extra_params)
                conn.execute(SQL_MOVE_HEAD, (seq, prev_hash, ts))
                conn.execute("COMMIT")

    def _merge_details(self, credential_id: str, details: dict[str, Any]) -> bool:
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT details FROM credentials WHERE credential_id = %s"
                               " FOR UPDATE", (credential_id,)).fetchone()
            if row is None:
                return False
            merged = {**json.loads(row[0]), **details}
            conn.execute("UPDATE credentials SET details = %s WHERE credential_id = %s",
                         (json_text(merged), credential_id))
            return True

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        with self._pool.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def read(sql: str, params: Params) -> list[Row]:
                return conn.execute(sql, tuple(params) or None).fetchall()

            try:
                yield read
            finally:
                if not conn.broken:
                    conn.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._pool.connection() as conn, conn.transaction():
            yield _PostgresTransaction(conn)


_CopyBatch = tuple[list[tuple[Any, ...]], list[Sequence[Any]], list[tuple[Any, ...]],
                   list[tuple[str, Sequence[Any]]]]


def _seal_for_copy(items: list[Item], claimed: set[str], repeats: set[int], *, seq: int,
                   prev_hash: str, ts: str) -> tuple[int, str, _CopyBatch]:
    """Seal the items whose claim (if any) succeeded, in order; sort their rows into the event,
    credential and root lineage rows to COPY and the statements to run one by one."""
    sealer = Sealer()
    event_rows: list[tuple[Any, ...]] = []
    credential_rows: list[Sequence[Any]] = []
    lineage_rows: list[tuple[Any, ...]] = []
    statements: list[tuple[str, Sequence[Any]]] = []
    for index, item in enumerate(items):
        if item.claim is not None and (index in repeats or item.claim[1][0] not in claimed):
            item.error = SingleUseTaken(item.draft.credential_id or "")
            continue
        seq += 1
        event, params = sealer.seal(item.draft, seq=seq, ts=ts, prev_hash=prev_hash)
        prev_hash = event.hash
        event_rows.append(params)
        for sql, extra in item.extra:
            if sql == SQL_INSERT_CREDENTIAL:
                credential_rows.append(extra)
            elif sql == SQL_INSERT_LINEAGE and extra[5] is None:      # a root: its own row only
                lineage_rows.append((extra[0], 0, extra[1], extra[2]))
            else:
                statements.append((sql, extra))
        item.event = event
    return seq, prev_hash, (event_rows, credential_rows, lineage_rows, statements)


def _copy_rows(cursor: psycopg.Cursor[Any], table: str, columns: Sequence[str],
               rows: Sequence[Sequence[Any]]) -> None:
    """``COPY table (columns) FROM STDIN`` of ``rows`` (the store's own table and columns)."""
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


class _PostgresTransaction:
    """:class:`~broker.ledger.store.Transaction` on one pooled PostgreSQL connection."""

    lock_suffix = " FOR UPDATE"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = self._conn.execute(sql, tuple(params) or None)
        return cursor.fetchall() if cursor.description is not None else []

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(sql, rows)

    def insert_rows(self, table: str, columns: Sequence[str], sql_text: str,
                    rows: Sequence[Params]) -> None:
        """Bulk insert with ``COPY … FROM STDIN`` (Ledger.append_many / record_usage): far
        cheaper for the client than executemany. ``table``/``columns`` are the store's own."""
        with self._conn.cursor() as cursor:
            _copy_rows(cursor, table, columns, rows)
