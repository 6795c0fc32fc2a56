"""Ledger schema and its migrations, for both backends.

Each :class:`Migration` is applied once, in order, inside one transaction that also records
its version in ``schema_version``; the store runs :data:`MIGRATIONS` on open under a database
lock (``pg_advisory_xact_lock`` / ``BEGIN IMMEDIATE``), so several processes starting at once
against an empty database create the schema exactly once. To change the schema, append a
migration with the next version; never edit an applied one.

JSON columns (``run``, ``authorizer``, ``details``) are TEXT holding
:func:`broker.canonical.canonical_json`, so they parse back to the very dicts that were hashed.
Tamper evidence is the hash chain, recomputed from these columns by ``Ledger.verify()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.ledger.events import GENESIS_HASH

#: Key of the PostgreSQL advisory lock held while the schema is created or upgraded.
PG_SCHEMA_LOCK_KEY = 0x6E68_6962_6C65_6467  # "nhibledg"

Statement = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    postgres: tuple[Statement, ...]
    sqlite: tuple[Statement, ...]

    def statements(self, dialect: str) -> tuple[Statement, ...]:
        return self.postgres if dialect == "postgres" else self.sqlite


SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)


def _events_table(bigint: str) -> str:
    return (
        "CREATE TABLE events ("
        f" seq {bigint} PRIMARY KEY CHECK (seq > 0),"
        " ts TEXT NOT NULL,"
        " type TEXT NOT NULL,"
        " credential_id TEXT,"
        " parent_id TEXT,"
        " principal TEXT,"
        " run TEXT,"
        " run_id TEXT,"
        " authorizer TEXT,"
        " target TEXT,"
        " details TEXT NOT NULL,"
        " prev_hash TEXT NOT NULL,"
        " hash TEXT NOT NULL)"
    )


def _credentials_table(bigint: str) -> str:
    return (
        "CREATE TABLE credentials ("
        " credential_id TEXT PRIMARY KEY,"
        " parent_id TEXT,"
        " principal TEXT NOT NULL,"
        " run TEXT NOT NULL,"
        " run_id TEXT,"
        " authorizer TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " target_type TEXT NOT NULL,"
        " scope TEXT NOT NULL,"
        f" issued_at {bigint} NOT NULL,"
        f" expires_at {bigint} NOT NULL,"
        f" revoked_at {bigint},"
        f" ended_at {bigint},"
        " issuer TEXT,"
        " details TEXT NOT NULL)"
    )


_HEAD_TABLE = (
    "CREATE TABLE ledger_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq BIGINT NOT NULL,"
    " hash TEXT NOT NULL,"
    " ts TEXT NOT NULL)"
)
_HEAD_ROW: Statement = (
    "INSERT INTO ledger_head (id, seq, hash, ts) VALUES (1, 0, %s, '')", (GENESIS_HASH,)
)

_INDEXES = (
    "CREATE INDEX events_credential_id_idx ON events (credential_id, seq)",
    "CREATE INDEX events_parent_id_idx ON events (parent_id)",
    "CREATE INDEX events_principal_idx ON events (principal)",
    "CREATE INDEX events_run_id_idx ON events (run_id)",
    "CREATE INDEX events_type_ts_idx ON events (type, ts)",
    "CREATE INDEX events_ts_idx ON events (ts)",
    "CREATE INDEX credentials_parent_id_idx ON credentials (parent_id)",
    "CREATE INDEX credentials_principal_idx ON credentials (principal)",
    "CREATE INDEX credentials_run_id_idx ON credentials (run_id)",
    "CREATE INDEX credentials_expires_at_idx ON credentials (expires_at)",
)


def _plain(*sql: str) -> tuple[Statement, ...]:
    return tuple((s, ()) for s in sql)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="events, credentials, ledger_head",
        postgres=(
            *_plain(_events_table("BIGINT"), _credentials_table("BIGINT"), _HEAD_TABLE),
            _HEAD_ROW,
            *_plain(*_INDEXES),
        ),
        # INTEGER PRIMARY KEY makes seq the rowid in SQLite: no extra index, 64-bit values.
        sqlite=(
            *_plain(_events_table("INTEGER"), _credentials_table("INTEGER"), _HEAD_TABLE),
            _HEAD_ROW,
            *_plain(*_INDEXES),
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
