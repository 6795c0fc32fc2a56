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

# Version 10 (audit read model, broker/audit/queries.py and Ledger.find_usage): projections the
# lineage, run and "who ran this" questions read instead of walking the credentials by
# ``parent_id`` or scanning every usage line. The ledger's append path writes them in the
# event's own transaction (broker/ledger/rows.py: SQL_INSERT_LINEAGE with each mint's
# credential row, SQL_ADD_USAGE_COUNTS with usage events, SQL_INSERT_USAGE_STATEMENTS and
# ``usage_lines.fingerprint`` with usage lines); this migration backfills them for a ledger
# written before it (the same statements, :func:`projection_backfill`, rebuild a bulk-loaded one).
#
# * ``credential_lineage``: the closure of ``parent_id`` — one row per (ancestor, credential)
#   pair, depth 0 being the credential itself. Descendants of X are the one index range
#   ``ancestor_id = X`` in (depth, issued_at, credential_id) order, the order the answers use;
#   ancestors of X are ``credential_id = X`` by depth.
# * ``usage_counts``: how many ``usage`` events each credential has (a lineage shows the count
#   of every node; a busy credential's count is one row, not an index walk over its usage).
# * ``usage_statements``: each distinct statement text of a ``usage`` line once, by
#   ``fingerprint`` (SHA-256 of its UTF-8, 32 hex digits), and ``usage_lines.fingerprint``
#   indexed with (seq, at): "who ran this" matches the statement text against the distinct
#   statements, then reads each matching statement's lines in seq order from the index.
_LINEAGE_MAX_DEPTH = 64          # the backfill's bound (policies allow at most 10 levels)


def _projection_tables(*, bigint: str, without_rowid: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE credential_lineage ("
        " ancestor_id TEXT NOT NULL,"
        " depth INTEGER NOT NULL CHECK (depth >= 0),"
        f" issued_at {bigint} NOT NULL,"
        " credential_id TEXT NOT NULL,"
        f" PRIMARY KEY (ancestor_id, depth, issued_at, credential_id)){without_rowid}",
        "CREATE INDEX credential_lineage_credential_idx"
        " ON credential_lineage (credential_id, depth, ancestor_id)",
        "CREATE TABLE usage_counts ("
        " credential_id TEXT PRIMARY KEY,"
        f" usage_count {bigint} NOT NULL){without_rowid}",
        "CREATE TABLE usage_statements ("
        " fingerprint TEXT PRIMARY KEY,"
        f" statement TEXT NOT NULL){without_rowid}",
        "ALTER TABLE usage_lines ADD COLUMN fingerprint TEXT",
    )


def projection_backfill(dialect: str) -> tuple[Statement, ...]:
    """Statements that (re)build the version-10 projections from ``credentials``, ``events``
    and ``usage_lines``, into empty projection tables: the migration's backfill, and what a
    bulk loader (bench/lineage.py) runs after writing rows behind the append path."""
    fingerprint = ("substr(encode(sha256(convert_to(u.statement, 'UTF8')), 'hex'), 1, 32)"
                   if dialect == "postgres" else "nhb_fingerprint(u.statement)")
    lines = ("UPDATE usage_lines u SET fingerprint = " + fingerprint +
             " FROM events e WHERE e.seq = u.seq AND e.type = 'usage' AND u.statement IS NOT NULL"
             if dialect == "postgres" else
             "UPDATE usage_lines AS u SET fingerprint = " + fingerprint +
             " WHERE u.statement IS NOT NULL"
             " AND EXISTS (SELECT 1 FROM events e WHERE e.seq = u.seq AND e.type = 'usage')")
    return _plain(
        "INSERT INTO credential_lineage (ancestor_id, depth, issued_at, credential_id)"
        " WITH RECURSIVE up(credential_id, issued_at, ancestor_id, next_id, depth) AS ("
        "  SELECT credential_id, issued_at, credential_id, parent_id, 0 FROM credentials"
        "  UNION ALL"
        "  SELECT up.credential_id, up.issued_at, c.credential_id, c.parent_id, up.depth + 1"
        "  FROM up JOIN credentials c ON c.credential_id = up.next_id"
        f"  WHERE up.depth < {_LINEAGE_MAX_DEPTH} AND c.credential_id <> up.credential_id)"
        " SELECT ancestor_id, depth, issued_at, credential_id FROM up",
        "INSERT INTO usage_counts (credential_id, usage_count)"
        " SELECT credential_id, count(*) FROM events"
        " WHERE type = 'usage' AND credential_id IS NOT NULL GROUP BY credential_id",
        lines,
        "INSERT INTO usage_statements (fingerprint, statement)"
        " SELECT fingerprint, min(statement) FROM usage_lines"
        " WHERE fingerprint IS NOT NULL GROUP BY fingerprint",
    )


def _projections(dialect: str) -> tuple[Statement, ...]:
    if dialect == "postgres":
        tables = _projection_tables(bigint="BIGINT", without_rowid="")
    else:
        tables = _projection_tables(bigint="INTEGER", without_rowid=" WITHOUT ROWID")
    # The index after the backfill: built once rather than updated row by row.
    return (*_plain(*tables), *projection_backfill(dialect),
            *_plain("CREATE INDEX usage_lines_fingerprint_idx ON usage_lines (fingerprint, seq, at)"))


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
    Migration(
        version=10,
        description="lineage closure, usage counts, statement fingerprints (audit projections)",
        postgres=_projections("postgres"),
        sqlite=_projections("sqlite"),
    ),
)

# Versions are applied in version order, each once (see the backends' _migrate).
LATEST_VERSION = max(m.version for m in MIGRATIONS)
