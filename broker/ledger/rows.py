"""The ledger's tables as SQL and Python: statements shared by both backends (``%s``
placeholders; the SQLite backend turns them into ``?``) and the row codecs."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from broker.common.canonical import canonical_json
from broker.ledger.events import CredentialRecord, Event

Params = Sequence[Any]
Statement = tuple[str, tuple[Any, ...]]
Row = tuple[Any, ...]
Reader = Callable[[str, Params], list[Row]]


class Transaction(Protocol):
    """Statements of one read-write transaction (``%s`` placeholders), from
    :meth:`Ledger._transaction`. ``lock_suffix`` is appended to a SELECT to lock its rows
    (`` FOR UPDATE`` on PostgreSQL; empty on SQLite, whose transaction holds the write lock)."""

    lock_suffix: str

    def execute(self, sql: str, params: Params = ()) -> list[Row]: ...
    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...
    def insert_rows(self, table: str, columns: Sequence[str], sql: str,
                    rows: Sequence[Params]) -> None:
        """Insert many rows: ``COPY … FROM STDIN`` on PostgreSQL, ``executemany(sql)`` on
        SQLite (``sql`` is the equivalent ``INSERT``)."""
        ...

# -- SQL shared by both backends (``%s`` placeholders; SQLite's adapter turns them into ``?``) --

EVENT_COLUMNS = ("seq, ts, type, credential_id, parent_id, principal, run, authorizer, target,"
                 " details, prev_hash, hash")
CREDENTIAL_COLUMNS = ("credential_id, parent_id, principal, run, authorizer, target, target_type,"
                      " scope, issued_at, expires_at, revoked_at, ended_at, issuer, details")

SQL_HEAD = "SELECT seq, hash, ts FROM ledger_head WHERE id = 1"
SQL_INSERT_EVENT = (
    "INSERT INTO events (seq, ts, type, credential_id, parent_id, principal, run, run_id,"
    " authorizer, target, details, prev_hash, hash)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
SQL_MOVE_HEAD = "UPDATE ledger_head SET seq = %s, hash = %s, ts = %s WHERE id = 1"
SQL_INSERT_CREDENTIAL = (
    "INSERT INTO credentials (credential_id, parent_id, principal, run, run_id, authorizer,"
    " target, target_type, scope, issued_at, expires_at, revoked_at, ended_at, issuer, details,"
    " backend_user)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
#: Claim an attestation's single use for a mint: a row for its key, or the takeover of an
#: expired one; no row back means the attestation already minted (``SingleUseTaken``).
SQL_CLAIM_SINGLE_USE = (
    "INSERT INTO attestation_uses (key_sha256, expires_at, credential_id) VALUES (%s, %s, %s)"
    " ON CONFLICT (key_sha256) DO UPDATE"
    " SET expires_at = excluded.expires_at, credential_id = excluded.credential_id"
    " WHERE attestation_uses.expires_at < %s RETURNING key_sha256"
)
#: Undo a claim in the same transaction when the mint's other guard then fails.
SQL_UNCLAIM_SINGLE_USE = "DELETE FROM attestation_uses WHERE key_sha256 = %s AND credential_id = %s"
SQL_PRUNE_SINGLE_USE = "DELETE FROM attestation_uses WHERE expires_at < %s"
SQL_SET_REVOKED = (
    "UPDATE credentials SET revoked_at = %s"
    " WHERE credential_id = %s AND revoked_at IS NULL RETURNING credential_id"
)
SQL_SET_ENDED = (
    "UPDATE credentials SET ended_at = %s"
    " WHERE credential_id = %s AND ended_at IS NULL RETURNING credential_id"
)
SQL_SET_REVOKED_AND_ENDED = (   # a revocation that also removed the backend resource
    "UPDATE credentials SET revoked_at = %s, ended_at = coalesce(ended_at, %s)"
    " WHERE credential_id = %s AND revoked_at IS NULL RETURNING credential_id"
)
SQL_INSERT_USAGE_LINE = (
    "INSERT INTO usage_lines (seq, line_key, credential_id, at, statement, fingerprint)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
# Column order of SQL_INSERT_EVENT / SQL_INSERT_USAGE_LINE, for bulk COPY.
EVENT_INSERT_COLUMNS = ("seq", "ts", "type", "credential_id", "parent_id", "principal", "run",
                        "run_id", "authorizer", "target", "details", "prev_hash", "hash")
USAGE_LINE_COLUMNS = ("seq", "line_key", "credential_id", "at", "statement", "fingerprint")
#: The columns of SQL_INSERT_CREDENTIAL, in its parameter order (a batch may COPY them).
CREDENTIAL_INSERT_COLUMNS = ("credential_id", "parent_id", "principal", "run", "run_id",
                             "authorizer", "target", "target_type", "scope", "issued_at",
                             "expires_at", "revoked_at", "ended_at", "issuer", "details",
                             "backend_user")
LINEAGE_COLUMNS = ("ancestor_id", "depth", "issued_at", "credential_id")

# -- projections (schema version 10), written in the event's own transaction --
#: A mint's rows of the ``credential_lineage`` closure: itself at depth 0, then each of its
#: parent's rows one deeper. Params: :func:`lineage_params`.
SQL_INSERT_LINEAGE = (
    "INSERT INTO credential_lineage (ancestor_id, depth, issued_at, credential_id)"
    " SELECT %s, 0, %s, %s"
    " UNION ALL"
    " SELECT ancestor_id, depth + 1, %s, %s FROM credential_lineage WHERE credential_id = %s"
)
_ADD_USAGE_COUNT = (
    "INSERT INTO usage_counts (credential_id, usage_count) VALUES {values}"
    " ON CONFLICT (credential_id) DO UPDATE"
    " SET usage_count = usage_counts.usage_count + excluded.usage_count"
)
_INSERT_USAGE_STATEMENTS = (
    "INSERT INTO usage_statements (fingerprint, statement) VALUES {values}"
    " ON CONFLICT (fingerprint) DO NOTHING"
)
#: PostgreSQL: the same two statements with one array parameter per column (psycopg parses a
#: long multi-row VALUES text on every call: most of a big usage batch's client time).
_ADD_USAGE_COUNT_PG = (
    "INSERT INTO usage_counts (credential_id, usage_count)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[])"
    " ON CONFLICT (credential_id) DO UPDATE"
    " SET usage_count = usage_counts.usage_count + excluded.usage_count"
)
_INSERT_USAGE_STATEMENTS_PG = (
    "INSERT INTO usage_statements (fingerprint, statement)"
    " SELECT * FROM unnest(%s::text[], %s::text[])"
    " ON CONFLICT (fingerprint) DO NOTHING"
)
#: Rows per multi-row VALUES statement below (two parameters each).
_VALUES_CHUNK = 400
SQL_GET_CREDENTIAL = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE credential_id = %s"
SQL_IS_REVOKED = "SELECT revoked_at FROM credentials WHERE credential_id = %s"
SQL_EVENTS_FOR_CREDENTIAL = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE credential_id = %s AND seq > %s"
    " ORDER BY seq LIMIT %s"
)
SQL_CHILDREN = (
    f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE parent_id = %s"
    " ORDER BY issued_at, credential_id"
)
_CREDENTIAL_COLUMNS_C = ", ".join(f"c.{c.strip()}" for c in CREDENTIAL_COLUMNS.split(","))
SQL_ANCESTORS = (   # the credential itself (depth 0), its parent (1), … up to the root
    "WITH RECURSIVE up(credential_id, up_id, depth) AS ("
    " SELECT credential_id, parent_id, 0 FROM credentials WHERE credential_id = %s"
    " UNION ALL"
    " SELECT c.credential_id, c.parent_id, up.depth + 1 FROM credentials c"
    " JOIN up ON c.credential_id = up.up_id WHERE up.depth < %s)"
    f" SELECT {_CREDENTIAL_COLUMNS_C} FROM up"
    " JOIN credentials c ON c.credential_id = up.credential_id ORDER BY up.depth"
)
SQL_DESCENDANTS = (  # children (depth 1), grandchildren (2), … parents before their children
    "WITH RECURSIVE down(credential_id, depth) AS ("
    " SELECT credential_id, 1 FROM credentials WHERE parent_id = %s"
    " UNION ALL"
    " SELECT c.credential_id, down.depth + 1 FROM credentials c"
    " JOIN down ON c.parent_id = down.credential_id WHERE down.depth < %s)"
    f" SELECT {_CREDENTIAL_COLUMNS_C}, down.depth FROM down"
    " JOIN credentials c ON c.credential_id = down.credential_id"
    " WHERE (%s = 0 OR c.revoked_at IS NULL)"
    " ORDER BY down.depth, c.issued_at, c.credential_id LIMIT %s"
)
SQL_EVENTS_FROM = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq >= %s ORDER BY seq LIMIT %s"
SQL_EVENTS_UP_TO = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE seq >= %s AND seq <= %s ORDER BY seq LIMIT %s"
)
SQL_EVENTS_AFTER_HEAD = "SELECT min(seq) FROM events WHERE seq > %s"
SQL_COUNT = "SELECT count(*) FROM events"


def lineage_params(record: CredentialRecord) -> tuple[Any, ...]:
    cid, issued = record.credential_id, record.issued_at
    return (cid, issued, cid, issued, cid, record.parent_id)


def statement_fingerprint(statement: str) -> str:
    """``usage_lines.fingerprint`` / ``usage_statements.fingerprint`` of a statement text: the
    first 32 hex digits of the SHA-256 of its UTF-8 (PostgreSQL computes the same in SQL for
    the backfill; SQLite through the ``nhb_fingerprint`` function its backend registers)."""
    return hashlib.sha256(statement.encode("utf-8")).hexdigest()[:32]


def _values(sql: str, pairs: Sequence[tuple[Any, Any]]) -> list[Statement]:
    out: list[Statement] = []
    for start in range(0, len(pairs), _VALUES_CHUNK):
        chunk = pairs[start:start + _VALUES_CHUNK]
        params = tuple(value for pair in chunk for value in pair)
        out.append((sql.format(values=", ".join(["(%s, %s)"] * len(chunk))), params))
    return out


def usage_count_statements(credential_ids: Sequence[str | None], dialect: str = "") -> list[Statement]:
    """Add the ``usage`` events of ``credential_ids`` (one entry per event) to ``usage_counts``."""
    counts: dict[str, int] = {}
    for cid in credential_ids:
        if cid:
            counts[cid] = counts.get(cid, 0) + 1
    if dialect == "postgres" and len(counts) > 1:
        return _arrays(_ADD_USAGE_COUNT_PG, sorted(counts.items()))
    return _values(_ADD_USAGE_COUNT, sorted(counts.items()))


def usage_statement_statements(fingerprints: dict[str, str], dialect: str = "") -> list[Statement]:
    """Record each distinct statement text (``{fingerprint: statement}``) once."""
    if dialect == "postgres" and len(fingerprints) > 1:
        return _arrays(_INSERT_USAGE_STATEMENTS_PG, sorted(fingerprints.items()))
    return _values(_INSERT_USAGE_STATEMENTS, sorted(fingerprints.items()))


def _arrays(sql: str, pairs: Sequence[tuple[Any, Any]]) -> list[Statement]:
    """One statement with a column array per side of ``pairs`` (PostgreSQL ``unnest``)."""
    return [(sql, ([a for a, _ in pairs], [b for _, b in pairs]))]


def json_text(value: Any) -> str | None:
    """The TEXT stored for a JSON column: canonical JSON, which parses back to an equal value."""
    return None if value is None else canonical_json(value).decode("utf-8")


def _json_value(text: Any) -> Any:
    return None if text is None else json.loads(text)


def run_id_of(run: dict[str, Any] | None) -> str | None:
    """The indexed ``run_id`` column: ``run["id"]`` as text, if any."""
    value = run.get("id") if isinstance(run, dict) else None
    return None if value is None else str(value)


def event_from_row(row: Row) -> Event:
    (seq, ts, type_, credential_id, parent_id, principal, run, authorizer, target, details,
     prev_hash, hash_) = row
    return Event(seq=int(seq), ts=ts, type=type_, credential_id=credential_id,
                 parent_id=parent_id, principal=principal, run=_json_value(run),
                 authorizer=_json_value(authorizer), target=target,
                 details=_json_value(details), prev_hash=prev_hash, hash=hash_)


def credential_from_row(row: Row) -> CredentialRecord:
    (credential_id, parent_id, principal, run, authorizer, target, target_type, scope,
     issued_at, expires_at, revoked_at, ended_at, issuer, details) = row
    return CredentialRecord(
        credential_id=credential_id, parent_id=parent_id, principal=principal,
        run=_json_value(run), authorizer=_json_value(authorizer), target=target,
        target_type=target_type, scope=scope, issued_at=int(issued_at),
        expires_at=int(expires_at), revoked_at=None if revoked_at is None else int(revoked_at),
        ended_at=None if ended_at is None else int(ended_at), issuer=issuer,
        details=_json_value(details) or {})


def _decode_all(texts: list[Any]) -> list[Any]:
    """JSON columns of many rows in one ``json.loads`` (a JSON array of them; NULL is null)."""
    return json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]") if texts else []


def events_from_rows(rows: Sequence[Row]) -> list[Event]:
    """:func:`event_from_row` of every row, the JSON columns decoded in one call."""
    values = iter(_decode_all([text for row in rows for text in (row[6], row[7], row[9])]))
    out: list[Event] = []
    for (seq, ts, type_, credential_id, parent_id, principal, _, _, target, _, prev_hash,
         hash_) in rows:
        run, authorizer, details = next(values), next(values), next(values)
        out.append(Event(seq=int(seq), ts=ts, type=type_, credential_id=credential_id,
                         parent_id=parent_id, principal=principal, run=run,
                         authorizer=authorizer, target=target, details=details,
                         prev_hash=prev_hash, hash=hash_))
    return out


def credentials_from_rows(rows: Sequence[Row]) -> list[CredentialRecord]:
    """:func:`credential_from_row` of every row, the JSON columns decoded in one call."""
    values = iter(_decode_all([text for row in rows for text in (row[3], row[4], row[13])]))
    out: list[CredentialRecord] = []
    for (credential_id, parent_id, principal, _, _, target, target_type, scope, issued_at,
         expires_at, revoked_at, ended_at, issuer, _) in rows:
        run, authorizer, details = next(values), next(values), next(values)
        out.append(CredentialRecord(
            credential_id=credential_id, parent_id=parent_id, principal=principal, run=run,
            authorizer=authorizer, target=target, target_type=target_type, scope=scope,
            issued_at=int(issued_at), expires_at=int(expires_at),
            revoked_at=None if revoked_at is None else int(revoked_at),
            ended_at=None if ended_at is None else int(ended_at), issuer=issuer,
            details=details or {}))
    return out


def event_params(event: Event) -> tuple[Any, ...]:
    return (event.seq, event.ts, event.type, event.credential_id, event.parent_id,
            event.principal, json_text(event.run), run_id_of(event.run),
            json_text(event.authorizer), event.target, json_text(event.details),
            event.prev_hash, event.hash)


def credential_params(record: CredentialRecord) -> tuple[Any, ...]:
    return (record.credential_id, record.parent_id, record.principal, json_text(record.run),
            run_id_of(record.run), json_text(record.authorizer), record.target,
            record.target_type, record.scope, record.issued_at, record.expires_at,
            record.revoked_at, record.ended_at, record.issuer, json_text(record.details or {}),
            backend_user_of(record))


def backend_user_of(record: CredentialRecord) -> str | None:
    """The database user a backend generated for the credential (``details.username``, which
    the vault-database kind records), indexed for log ingestion. None for broker-named roles
    (``nhb_<credential id>`` already names its credential)."""
    value = (record.details or {}).get("username")
    return value if isinstance(value, str) and value else None
