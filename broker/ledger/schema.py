"""Ledger schema and its migrations, for both backends.

Each :class:`Migration` is applied once, in order, inside one transaction that also records
its version in ``schema_version``; the store runs :data:`MIGRATIONS` on open under a database
lock (``pg_advisory_xact_lock`` / ``BEGIN IMMEDIATE``), so several processes starting at once
against an empty database create the schema exactly once. To change the schema, append a
migration with the next version; never edit an applied one.

JSON columns (``run``, ``authorizer``, ``details``) are TEXT holding
:func:`broker.common.canonical.canonical_json`, so they parse back to the very dicts that were hashed.
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


# Version 6: approvals and delegations (the people's store, broker/people/store.py, owns the rows).

def approval_tables(bigint: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE approvals ("
        " approval_id TEXT PRIMARY KEY,"
        " status TEXT NOT NULL,"
        " version INTEGER NOT NULL,"
        f" created_at {bigint} NOT NULL,"
        f" expires_at {bigint} NOT NULL,"
        " principal TEXT NOT NULL,"
        " run TEXT NOT NULL,"
        " issuer TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " requested_scope TEXT,"
        f" requested_ttl {bigint},"
        " scope TEXT NOT NULL,"
        f" ttl {bigint} NOT NULL,"
        " policy_name TEXT NOT NULL,"
        " policy_digest TEXT NOT NULL,"
        " required INTEGER NOT NULL,"
        " votes TEXT NOT NULL,"
        f" decided_at {bigint},"
        " decided_by TEXT,"
        " reason TEXT,"
        " credential_id TEXT,"
        f" consumed_at {bigint},"
        f" last_poll_ms {bigint} NOT NULL,"
        " details TEXT NOT NULL)",
        "CREATE INDEX approvals_status_idx ON approvals (status, created_at)",
        "CREATE TABLE delegations ("
        " delegation_id TEXT PRIMARY KEY,"
        " granted_by TEXT NOT NULL,"
        " agent TEXT NOT NULL,"
        " targets TEXT NOT NULL,"
        " scopes TEXT NOT NULL,"
        f" created_at {bigint} NOT NULL,"
        f" expires_at {bigint} NOT NULL,"
        f" revoked_at {bigint},"
        " revoked_by TEXT,"
        f" uses {bigint} NOT NULL,"
        " details TEXT NOT NULL)",
        "CREATE INDEX delegations_granted_by_idx ON delegations (granted_by, created_at)",
        "CREATE TABLE delegation_credentials ("
        " delegation_id TEXT NOT NULL,"
        " credential_id TEXT NOT NULL,"
        " PRIMARY KEY (delegation_id, credential_id))",
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


# Version 5 (audit queries, broker/audit/queries.py): every filtered event query walks an
# index ending in seq, so keyset pages and "first N usage events" read only what they return;
# usage counts are index-only.
_AUDIT_INDEXES = (
    "CREATE INDEX events_credential_type_seq_idx ON events (credential_id, type, seq)",
    "CREATE INDEX events_principal_seq_idx ON events (principal, seq)",
    "CREATE INDEX events_principal_type_seq_idx ON events (principal, type, seq)",
    "CREATE INDEX events_type_seq_idx ON events (type, seq)",
    "CREATE INDEX credentials_principal_issued_idx ON credentials (principal, issued_at)",
)


def _plain(*sql: str) -> tuple[Statement, ...]:
    return tuple((s, ()) for s in sql)


# Version 2 (usage linking, broker/usage/): ``usage_lines`` is the projection of ``usage``
# events that the log ingester dedupes on (``line_key`` — e.g. session id + session line
# number — is unique, so re-reading a log or a rotated copy records nothing twice) and that
# "who ran this" (GET /v1/usage) searches by statement text and statement time (``at``, RFC
# 3339 UTC as written by the database's log). The partial index keeps the reaper's
# "credentials still to end" query proportional to the live credentials of its kinds.
def _usage_tables(bigint: str) -> tuple[Statement, ...]:
    return _plain(
        "CREATE TABLE usage_lines ("
        f" seq {bigint} PRIMARY KEY,"
        " line_key TEXT NOT NULL UNIQUE,"
        " credential_id TEXT NOT NULL,"
        " at TEXT NOT NULL,"
        " statement TEXT)",
        "CREATE INDEX usage_lines_at_idx ON usage_lines (at, seq)",
        "CREATE INDEX credentials_unended_idx ON credentials (target_type, expires_at)"
        " WHERE ended_at IS NULL",
    )


# Version 3 (Merkle tree and signed checkpoints, broker/transparency/tree.py and checkpoints.py):
# ``merkle_nodes`` holds the hash of every complete subtree (level 0 = leaf hashes) of the
# RFC 6962 tree over the events, ``merkle_head.size`` how many events they cover (filled in
# batches, never by the append path); ``checkpoints`` keeps every signed tree head.
def _merkle_tables(*, bigint: str, blob: str, nodes_suffix: str, identity: str) -> tuple[Statement, ...]:
    return (
        *_plain(
            "CREATE TABLE merkle_nodes ("
            " level INTEGER NOT NULL CHECK (level >= 0),"
            f" idx {bigint} NOT NULL CHECK (idx >= 0),"
            f" hash {blob} NOT NULL,"
            f" PRIMARY KEY (level, idx)){nodes_suffix}",
            "CREATE TABLE merkle_head ("
            " id INTEGER PRIMARY KEY CHECK (id = 1),"
            f" size {bigint} NOT NULL)",
        ),
        ("INSERT INTO merkle_head (id, size) VALUES (1, 0)", ()),
        *_plain(
            "CREATE TABLE checkpoints ("
            f" id {identity},"
            f" tree_size {bigint} NOT NULL CHECK (tree_size >= 0),"
            " root_hash TEXT NOT NULL,"
            " ts TEXT NOT NULL,"
            " issuer TEXT NOT NULL,"
            " key_id TEXT NOT NULL,"
            " signature TEXT NOT NULL)",
            "CREATE INDEX checkpoints_tree_size_idx ON checkpoints (tree_size, id)",
        ),
    )


_V7_COMMON = (
    "ALTER TABLE credentials ADD COLUMN backend_user TEXT",
    "CREATE INDEX credentials_backend_user_idx ON credentials (backend_user)",
    "DROP INDEX IF EXISTS events_principal_idx",
    "DROP INDEX IF EXISTS events_type_ts_idx",
    "DROP INDEX IF EXISTS events_parent_id_idx",
    "DROP INDEX IF EXISTS credentials_principal_idx",
)


_COSIGNATURES = (
    "CREATE TABLE IF NOT EXISTS checkpoint_cosignatures ("
    " origin TEXT NOT NULL, tree_size BIGINT NOT NULL, root_hash TEXT NOT NULL,"
    " name TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL,"
    " received_at TEXT NOT NULL,"
    " PRIMARY KEY (origin, tree_size, root_hash, name, key_id, signature))")

_ATTESTATION_USES = (
    "CREATE TABLE attestation_uses ("
    " key_sha256 TEXT PRIMARY KEY, expires_at BIGINT NOT NULL, credential_id TEXT NOT NULL)",
    "CREATE INDEX attestation_uses_expires_idx ON attestation_uses (expires_at)",
)

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
    Migration(
        version=2,
        description="usage lines (log-line dedupe, statement search), credentials still to end",
        postgres=_usage_tables("BIGINT"),
        sqlite=_usage_tables("INTEGER"),
    ),
    Migration(
        version=3,
        description="merkle tree nodes and signed checkpoints",
        postgres=_merkle_tables(bigint="BIGINT", blob="BYTEA", nodes_suffix="",
                                identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
        # WITHOUT ROWID: the (level, idx) key is the table's b-tree, no second index.
        sqlite=_merkle_tables(bigint="INTEGER", blob="BLOB", nodes_suffix=" WITHOUT ROWID",
                              identity="INTEGER PRIMARY KEY"),
    ),
    Migration(
        version=5,
        description="audit indexes: usage per credential, event search, principal windows",
        postgres=_plain(*_AUDIT_INDEXES),
        sqlite=_plain(*_AUDIT_INDEXES),
    ),
    # Version 6 (human authorizers, broker/people/store.py): approval requests and their
    # decisions, people's delegations to agents and the credentials minted under them.
    Migration(
        version=6,
        description="approvals, delegations",
        postgres=_plain(*approval_tables("BIGINT")),
        sqlite=_plain(*approval_tables("INTEGER")),
    ),
    # Version 7: the database user a backend generated for a credential (Vault's database
    # engine names its own users) gets a column and an index, so log ingestion maps a user to
    # its credential with one lookup; and four indexes that others cover are dropped, since
    # every index costs each append (events_principal_idx ⊂ events_principal_seq_idx,
    # credentials_principal_idx ⊂ credentials_principal_issued_idx; nothing queries events by
    # (type, ts) or by parent_id).
    Migration(
        version=7,
        description="credentials.backend_user; drop redundant indexes",
        postgres=_plain(*_V7_COMMON),
        sqlite=_plain(*_V7_COMMON),
    ),
    # Version 8: witnesses' cosignatures of the checkpoint notes (broker/transparency/
    # signed_notes.py). IF NOT EXISTS: brokers before this version created it on first use.
    Migration(
        version=8,
        description="checkpoint_cosignatures",
        postgres=_plain(_COSIGNATURES),
        sqlite=_plain(_COSIGNATURES),
    ),
    # Version 9: single use anchored in the ledger (broker/ledger/store.py record_mint): the
    # SHA-256 of each attestation's single-use key that minted a credential, claimed in the
    # mint's own transaction, until the attestation could not be accepted anyway (then pruned).
    Migration(
        version=9,
        description="attestation_uses: single use that outlives the replay store",
        postgres=_plain(*_ATTESTATION_USES),
        sqlite=_plain(*_ATTESTATION_USES),
    ),
)

# Versions are applied in version order, each once (see the backends' _migrate).
LATEST_VERSION = max(m.version for m in MIGRATIONS)
