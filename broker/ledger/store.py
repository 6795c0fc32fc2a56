"""The append-only, hash-chained ledger store, with a SQLite and a PostgreSQL backend.

:class:`Ledger` holds everything the two backends share: the public API, the SQL of every
read (written once, with ``%s`` placeholders), row decoding and chain verification. A backend
supplies four primitives: run a read, run a chain transaction (:meth:`Ledger._append`), merge
credential details, and read inside one consistent snapshot (for :meth:`Ledger.verify`).

Every write that adds an event is one transaction that

1. locks the single ``ledger_head`` row (PostgreSQL ``SELECT … FOR UPDATE``; SQLite
   ``BEGIN IMMEDIATE``, which takes the database's one write lock), reading the last
   ``seq``/``hash``/``ts``;
2. optionally runs a *guard* (``UPDATE credentials … RETURNING``) and gives up, appending
   nothing, when it touches no row;
3. seals the event with the next ``seq``, a ``ts`` taken while the lock is held, and the
   previous hash; inserts it; moves the head; runs any extra statement (the credential row of
   a mint); commits.

So however many threads and processes append, there is one chain, ``seq`` is contiguous and
time order equals ``seq`` order.
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator, Protocol, Sequence

from broker.canonical import canonical_json
from broker.ledger.errors import LedgerUnavailable
from broker.ledger.events import (
    EVENT_TYPES, GENESIS_HASH, CredentialRecord, Event, EventDraft, VerifyReport,
)
from broker.ledger.events import utc_timestamp
from broker.ledger.approvals import ApprovalStore
from broker.ledger.queries import AuditQueries

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
    "INSERT INTO usage_lines (seq, line_key, credential_id, at, statement) VALUES (%s, %s, %s, %s, %s)"
)
# Column order of SQL_INSERT_EVENT / SQL_INSERT_USAGE_LINE, for bulk COPY.
EVENT_INSERT_COLUMNS = ("seq", "ts", "type", "credential_id", "parent_id", "principal", "run",
                        "run_id", "authorizer", "target", "details", "prev_hash", "hash")
USAGE_LINE_COLUMNS = ("seq", "line_key", "credential_id", "at", "statement")
#: Keys per ``IN (…)`` probe of ``usage_lines`` (well under SQLite's variable limit).
_USAGE_KEY_CHUNK = 500
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


class BatchSealer:
    """Seals the events of one batch, serialising each JSON value once.

    Produces exactly what :meth:`Event.seal` + :func:`event_params` produce (the canonical
    body is assembled from the canonical texts of its values, keys in sorted order), without
    serialising ``run``/``authorizer``/``details`` twice per event, and serialising a ``run``
    or ``authorizer`` object shared by many drafts (one credential's usage) only once.
    """

    # The settings of broker.canonical.canonical_json, as one reusable encoder.
    _encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                allow_nan=False)

    def __init__(self) -> None:
        self._texts: dict[int, tuple[Any, str]] = {}
        self._scalars: dict[str | None, str] = {None: "null"}

    def scalar(self, value: str | None) -> str:
        text = self._scalars.get(value)
        if text is None:
            text = _encode_string(value)
            if len(self._scalars) < 4096:
                self._scalars[value] = text
        return text

    def text(self, value: Any) -> str | None:
        if value is None:
            return None
        hit = self._texts.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        text = self._encoder.encode(value)
        self._texts[id(value)] = (value, text)      # the reference keeps id(value) unique
        return text

    def seal(self, draft: EventDraft, *, seq: int, ts: str, prev_hash: str
             ) -> tuple[Event, tuple[Any, ...]]:
        """The sealed event and its ``SQL_INSERT_EVENT`` parameters."""
        run_t = self.text(draft.run)
        authorizer_t = self.text(draft.authorizer)
        details = dict(draft.details)
        details_t = self._encoder.encode(details)
        scalar = self.scalar
        body = "".join((
            '{"authorizer":', authorizer_t or "null",
            ',"credential_id":', scalar(draft.credential_id),
            ',"details":', details_t,
            ',"parent_id":', scalar(draft.parent_id),
            ',"prev_hash":"', prev_hash,              # lower-case hex: needs no escaping
            '","principal":', scalar(draft.principal),
            ',"run":', run_t or "null",
            ',"seq":', str(int(seq)),
            ',"target":', scalar(draft.target),
            ',"ts":', scalar(ts),
            ',"type":', scalar(draft.type), "}"))
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
        event = Event(seq=seq, ts=ts, type=draft.type, credential_id=draft.credential_id,
                      parent_id=draft.parent_id, principal=draft.principal, run=draft.run,
                      authorizer=draft.authorizer, target=draft.target, details=details,
                      prev_hash=prev_hash, hash=digest)
        params = (seq, ts, draft.type, draft.credential_id, draft.parent_id, draft.principal,
                  run_t, run_id_of(draft.run), authorizer_t, draft.target, details_t, prev_hash,
                  digest)
        return event, params


def _encode_string(value: str) -> str:
    """A str as json.dumps(value, ensure_ascii=False) writes it."""
    if not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    return _ENCODE_BASESTRING(value)


from json.encoder import encode_basestring as _ENCODE_BASESTRING  # noqa: E402 - C speedup


def seal_next(draft: EventDraft, *, head_seq: int, head_hash: str, head_ts: str,
              now: str) -> Event:
    """The event that follows the head. ``ts`` never goes below the head's (clock skew
    between hosts), so time order is ``seq`` order."""
    return Event.seal(draft, seq=head_seq + 1, ts=max(now, head_ts), prev_hash=head_hash)


def verify_chain(read: Reader, *, batch: int = 2000) -> VerifyReport:
    """Recompute the chain from columns, streaming, inside one snapshot given by ``read``.

    Checks, in order, for each row: ``seq`` is the next integer, ``hash`` equals the hash
    recomputed from the row's columns, ``prev_hash`` equals the previous row's hash; at the
    end, the last event equals ``ledger_head`` (which catches a deleted last row). On failure
    ``count`` is the number of events that verified before the first bad one.
    """
    head_rows = read(SQL_HEAD, ())
    if not head_rows:
        return VerifyReport(ok=False, count=0, first_bad_seq=1, reason="ledger_head row is missing")
    head_seq, head_hash = int(head_rows[0][0]), head_rows[0][1]
    expected, prev_hash = 1, GENESIS_HASH
    while True:
        rows = read(SQL_EVENTS_UP_TO, (expected, head_seq, batch))
        for row in rows:
            seq = int(row[0])
            count = expected - 1
            if seq > expected:
                return VerifyReport(False, count, seq, f"missing event(s) before seq {seq}"
                                    f" (expected seq {expected})")
            if seq < expected:   # only possible for a first row with seq < 1
                return VerifyReport(False, count, seq, f"unexpected seq {seq}")
            try:
                event = event_from_row(row)
                recomputed = event.computed_hash()
            except (TypeError, ValueError):
                return VerifyReport(False, count, seq, "row cannot be decoded")
            if event.hash != recomputed:
                return VerifyReport(False, count, seq, "hash mismatch")
            if event.prev_hash != prev_hash:
                return VerifyReport(False, count, seq,
                                    "prev_hash does not link to the previous event")
            prev_hash = event.hash
            expected += 1
        if len(rows) < batch:
            break
    last_seq = expected - 1
    if last_seq != head_seq or prev_hash != head_hash:
        if last_seq < head_seq:
            detail = f"missing event(s) after seq {last_seq}"
        else:
            detail = "last event's hash differs"
        return VerifyReport(False, last_seq, last_seq + 1 if last_seq < head_seq else last_seq,
                            f"head does not match last event (head seq {head_seq}): {detail}")
    beyond = read(SQL_EVENTS_AFTER_HEAD, (head_seq,))
    if beyond and beyond[0][0] is not None:
        seq = int(beyond[0][0])
        return VerifyReport(False, last_seq, seq,
                            f"head does not match last event: event {seq} lies beyond the head")
    return VerifyReport(ok=True, count=last_seq)


class Ledger(AuditQueries, ApprovalStore, abc.ABC):
    """The ledger: append events to one hash chain and query events and credentials.

    Thread-safe. Each process opens its own (see :func:`open_ledger`); many processes may
    share one database. Any database failure raises :class:`LedgerUnavailable`.
    """

    #: Exceptions of the driver that mean "the database failed" (mapped to LedgerUnavailable).
    _db_errors: tuple[type[BaseException], ...] = ()

    # -- backend primitives ----------------------------------------------------------------
    @abc.abstractmethod
    def _read(self, sql: str, params: Params) -> list[Row]:
        """Run one read statement (its own implicit transaction) and return all rows."""

    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[Transaction]:
        """A read-write transaction, committed when the block ends, rolled back on error
        (SQLite: ``BEGIN IMMEDIATE``, the database's write lock). Used by the Merkle tree
        (broker/ledger/tree.py), never by the append path."""

    @abc.abstractmethod
    def _append(self, draft: EventDraft, *, guard: Statement | None = None,
                extra: Sequence[Statement] = ()) -> Event | None:
        """One chain transaction (see the module docstring). None when ``guard`` matched no
        row, in which case nothing was written."""

    @abc.abstractmethod
    def _merge_details(self, credential_id: str, details: dict[str, Any]) -> bool:
        """Merge ``details`` into a credential row's details, atomically; False if unknown."""

    @abc.abstractmethod
    def _snapshot(self) -> AbstractContextManager[Reader]:
        """A reader whose statements all see one consistent snapshot of the database."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The ledger cannot be used afterwards."""

    # -- errors ----------------------------------------------------------------------------
    @contextmanager
    def _unavailable_on_error(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._db_errors as exc:
            # Generic message only: driver messages may name hosts; never a DSN or password.
            raise LedgerUnavailable(f"ledger database error during {action}") from exc

    # -- writes ----------------------------------------------------------------------------
    def append(self, draft: EventDraft) -> Event:
        """Append one event; assigns ``seq``, ``ts``, ``prev_hash`` and ``hash``."""
        _check_draft(draft)
        with self._unavailable_on_error("append"):
            event = self._append(draft)
        assert event is not None
        return event

    def record_mint(self, draft: EventDraft, credential: CredentialRecord, *,
                    guard: Statement | None = None, extra: Sequence[Statement] = ()) -> Event | None:
        """Append the mint event and insert the credential row, in one transaction.

        With ``guard`` (e.g. consuming the approval it was minted under) nothing is written and
        None is returned when the guard touches no row; ``extra`` statements run after the
        credential row (e.g. linking it to its delegation)."""
        _check_draft(draft, credential.credential_id)
        with self._unavailable_on_error("record_mint"):
            event = self._append(draft, guard=guard,
                                 extra=[(SQL_INSERT_CREDENTIAL, credential_params(credential)),
                                        *extra])
        assert event is not None or guard is not None
        return event

    def record_revoke(self, credential_id: str, draft: EventDraft, *,
                      revoked_at: int, ended_at: int | None = None) -> Event | None:
        """Set ``revoked_at`` and append ``draft``, atomically. None, appending nothing, when
        the credential is unknown or already revoked. With ``ended_at`` (the backend resource
        was removed before this call) ``ended_at`` is set too, unless already set."""
        _check_draft(draft, credential_id)
        if ended_at is None:
            guard = (SQL_SET_REVOKED, (int(revoked_at), credential_id))
        else:
            guard = (SQL_SET_REVOKED_AND_ENDED, (int(revoked_at), int(ended_at), credential_id))
        with self._unavailable_on_error("record_revoke"):
            return self._append(draft, guard=guard)

    def record_end(self, credential_id: str, draft: EventDraft, *,
                   ended_at: int) -> Event | None:
        """Set ``ended_at`` (the backend resource is gone) and append ``draft``, atomically.
        None, appending nothing, when the credential is unknown or already ended."""
        _check_draft(draft, credential_id)
        with self._unavailable_on_error("record_end"):
            return self._append(draft, guard=(SQL_SET_ENDED, (int(ended_at), credential_id)))

    def append_many(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """Append several events in one transaction (one head lock, one commit), in order."""
        for draft in drafts:
            _check_draft(draft)
        if not drafts:
            return []
        with self._unavailable_on_error("append_many"):
            return self._append_batch([(draft, None) for draft in drafts])

    def record_usage(self, items: Sequence[tuple[EventDraft, str, str, str | None]]) -> list[Event]:
        """Append ``usage`` events, each ``(draft, line_key, at, statement)``, in one
        transaction, skipping every item whose ``line_key`` is already recorded (or repeats
        within the batch): re-reading a log records nothing twice. ``at`` is when the
        statement ran (RFC 3339 UTC); ``statement`` the (redacted) text, for searching.
        Returns the events appended."""
        for draft, _, _, _ in items:
            _check_draft(draft)
            if draft.type != "usage":
                raise ValueError("record_usage takes usage events only")
        if not items:
            return []
        with self._unavailable_on_error("record_usage"):
            return self._append_batch([(draft, (key, at, statement))
                                       for draft, key, at, statement in items])

    def _append_batch(self, items: Sequence[tuple[EventDraft, tuple[str, str, str | None] | None]]
                      ) -> list[Event]:
        """One chain transaction for many events (see the module docstring); an item's usage
        line, when given, is deduplicated on its key and written to ``usage_lines``."""
        with self._transaction() as tx:
            head = tx.execute(SQL_HEAD + tx.lock_suffix)
            if not head:
                raise LedgerUnavailable("ledger_head row is missing")
            seq, prev_hash, head_ts = int(head[0][0]), head[0][1], head[0][2]
            keys = list(dict.fromkeys(line[0] for _, line in items if line is not None))
            seen: set[str] = set()
            for start in range(0, len(keys), _USAGE_KEY_CHUNK):
                chunk = keys[start:start + _USAGE_KEY_CHUNK]
                rows = tx.execute("SELECT line_key FROM usage_lines WHERE line_key IN"
                                  f" ({', '.join(['%s'] * len(chunk))})", chunk)
                seen.update(row[0] for row in rows)
            ts = max(utc_timestamp(), head_ts)     # one ts for the batch, never below the head's
            sealer = BatchSealer()
            events: list[Event] = []
            event_rows: list[tuple[Any, ...]] = []
            usage_rows: list[tuple[Any, ...]] = []
            for draft, line in items:
                if line is not None:
                    if line[0] in seen:
                        continue
                    seen.add(line[0])
                seq += 1
                event, row = sealer.seal(draft, seq=seq, ts=ts, prev_hash=prev_hash)
                prev_hash, head_ts = event.hash, ts
                events.append(event)
                event_rows.append(row)
                if line is not None:
                    usage_rows.append((seq, line[0], event.credential_id, line[1], line[2]))
            if events:
                copy_rows = getattr(tx, "copy_rows", None)     # PostgreSQL: COPY FROM STDIN
                if copy_rows is not None:
                    copy_rows("events", EVENT_INSERT_COLUMNS, event_rows)
                    if usage_rows:
                        copy_rows("usage_lines", USAGE_LINE_COLUMNS, usage_rows)
                else:
                    tx.executemany(SQL_INSERT_EVENT, event_rows)
                    if usage_rows:
                        tx.executemany(SQL_INSERT_USAGE_LINE, usage_rows)
                tx.execute(SQL_MOVE_HEAD, (seq, prev_hash, head_ts))
        return events

    def update_credential_details(self, credential_id: str, details: dict[str, Any]) -> bool:
        """Merge non-secret backend facts (role name, lease id) into the credential's details
        (top-level keys of ``details`` replace existing ones). False if the id is unknown.
        Not an event: ``details`` of the credential row are not part of the chain."""
        with self._unavailable_on_error("update_credential_details"):
            return self._merge_details(credential_id, dict(details))

    # -- credential queries ----------------------------------------------------------------
    def get_credential(self, credential_id: str) -> CredentialRecord | None:
        with self._unavailable_on_error("get_credential"):
            rows = self._read(SQL_GET_CREDENTIAL, (credential_id,))
        return credential_from_row(rows[0]) if rows else None

    def credential_by_backend_user(self, username: str, *, at: float | None = None,
                                   slack: int = 300) -> CredentialRecord | None:
        """The credential whose backend-generated database user is ``username`` (the newest,
        or the newest alive at ``at`` ± ``slack`` seconds), by the indexed ``backend_user``."""
        sql = SQL_GET_CREDENTIAL.replace("WHERE credential_id = %s", "WHERE backend_user = %s")
        params: list[Any] = [username]
        if at is not None:
            sql += " AND issued_at <= %s AND expires_at >= %s"
            params.extend([int(at) + slack, int(at) - slack])
        sql += " ORDER BY issued_at DESC LIMIT 1"
        with self._unavailable_on_error("credential_by_backend_user"):
            rows = self._read(sql, params)
        return credential_from_row(rows[0]) if rows else None

    def is_revoked(self, credential_id: str) -> bool:
        """True when the credential has been revoked (False for an unknown id)."""
        with self._unavailable_on_error("is_revoked"):
            rows = self._read(SQL_IS_REVOKED, (credential_id,))
        return bool(rows) and rows[0][0] is not None

    def children_of(self, credential_id: str) -> list[CredentialRecord]:
        """Credentials whose ``parent_id`` is ``credential_id``, in creation order."""
        with self._unavailable_on_error("children_of"):
            rows = self._read(SQL_CHILDREN, (credential_id,))
        return [credential_from_row(row) for row in rows]

    def ancestors_of(self, credential_id: str, *, max_depth: int = 32) -> list[CredentialRecord]:
        """The credential itself, then its parent, … up to its root, at most ``max_depth``
        steps up (one query; empty for an unknown id)."""
        with self._unavailable_on_error("ancestors_of"):
            rows = self._read(SQL_ANCESTORS, (credential_id, _positive(max_depth, "max_depth")))
        chain: list[CredentialRecord] = []
        for row in rows:
            record = credential_from_row(row)
            if any(r.credential_id == record.credential_id for r in chain):
                break                       # a parent_id cycle: never written by the broker
            chain.append(record)
        return chain

    def descendants_of(self, credential_id: str, *, unrevoked_only: bool = False,
                       max_depth: int = 32, limit: int = 1000) -> list[tuple[CredentialRecord, int]]:
        """``(credential, depth)`` below ``credential_id`` (children are depth 1), at most
        ``max_depth`` levels and ``limit`` rows, parents before their children (by depth, then
        creation). With ``unrevoked_only`` the walk still passes through revoked credentials
        but returns only those not yet revoked (what a revocation cascade has left to do)."""
        with self._unavailable_on_error("descendants_of"):
            rows = self._read(SQL_DESCENDANTS, (credential_id, _positive(max_depth, "max_depth"),
                                                1 if unrevoked_only else 0,
                                                _positive(limit, "limit")))
        return [(credential_from_row(row[:-1]), int(row[-1])) for row in rows]

    def find_credentials(self, *, principal: str | None = None, run_id: str | None = None,
                         target: str | None = None, active_at: int | None = None,
                         limit: int = 100) -> list[CredentialRecord]:
        """Credentials matching every given filter, newest first.

        ``active_at`` (epoch seconds) keeps credentials issued at or before that instant that
        had not yet expired, been revoked or been ended.
        """
        where: list[str] = []
        params: list[Any] = []
        if principal is not None:
            where.append("principal = %s")
            params.append(principal)
        if run_id is not None:
            where.append("run_id = %s")
            params.append(str(run_id))
        if target is not None:
            where.append("target = %s")
            params.append(target)
        if active_at is not None:
            where.append("issued_at <= %s AND expires_at > %s"
                         " AND (revoked_at IS NULL OR revoked_at > %s)"
                         " AND (ended_at IS NULL OR ended_at > %s)")
            params.extend([int(active_at)] * 4)
        sql = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY issued_at DESC, credential_id DESC LIMIT %s"
        params.append(_positive(limit, "limit"))
        with self._unavailable_on_error("find_credentials"):
            rows = self._read(sql, params)
        return [credential_from_row(row) for row in rows]

    def credentials_to_end(self, *, now: int, limit: int = 100,
                           target_types: Sequence[str] | None = None) -> list[CredentialRecord]:
        """Credentials not yet ended that expired at or before ``now`` or were revoked: what
        an expiry sweeper must still remove at the backend (then :meth:`record_end`).
        ``target_types`` keeps only credentials of those kinds (the ones with a resource)."""
        params: list[Any] = [int(now)]
        kinds = ""
        if target_types is not None:
            if not target_types:
                return []
            kinds = f" AND target_type IN ({', '.join(['%s'] * len(target_types))})"
            params.extend(target_types)
        sql = (f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE ended_at IS NULL"
               f" AND (expires_at <= %s OR revoked_at IS NOT NULL){kinds}"
               " ORDER BY expires_at, credential_id LIMIT %s")
        params.append(_positive(limit, "limit"))
        with self._unavailable_on_error("credentials_to_end"):
            rows = self._read(sql, params)
        return [credential_from_row(row) for row in rows]

    # -- event queries ---------------------------------------------------------------------
    def events_for_credential(self, credential_id: str, *, after_seq: int = 0,
                              limit: int = 100, exclude_types: Sequence[str] = ()) -> list[Event]:
        """Events about ``credential_id`` with ``seq > after_seq``, in seq order (without
        the ``exclude_types``, e.g. ``("usage",)`` for the lifecycle alone)."""
        sql, params = SQL_EVENTS_FOR_CREDENTIAL, [credential_id, int(after_seq)]
        if exclude_types:
            sql = sql.replace(" ORDER BY", f" AND type NOT IN ({', '.join(['%s'] * len(exclude_types))})"
                                           " ORDER BY")
            params.extend(exclude_types)
        params.append(_positive(limit, "limit"))
        with self._unavailable_on_error("events_for_credential"):
            rows = self._read(sql, params)
        return [event_from_row(row) for row in rows]

    def usage_for_credential(self, credential_id: str, *, after_seq: int = 0,
                             limit: int = 100) -> list[Event]:
        """``usage`` events of ``credential_id`` with ``seq > after_seq``, in seq order."""
        with self._unavailable_on_error("usage_for_credential"):
            rows = self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE credential_id = %s"
                              " AND type = 'usage' AND seq > %s ORDER BY seq LIMIT %s",
                              (credential_id, int(after_seq), _positive(limit, "limit")))
        return [event_from_row(row) for row in rows]

    def find_usage(self, *, statement: str | None = None, since: str | None = None,
                   until: str | None = None, after_seq: int = 0, limit: int = 100) -> list[Event]:
        """``usage`` events whose statement contains ``statement`` (case-insensitive for
        ASCII) and that ran in ``[since, until)`` (RFC 3339 UTC as
        :func:`~broker.ledger.events.utc_timestamp` writes it, compared with the time the
        database logged), ``seq > after_seq``, in seq order, at most ``limit``."""
        where, params = ["u.seq > %s"], [int(after_seq)]
        if statement:
            escaped = statement.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("lower(u.statement) LIKE %s ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if since is not None:
            where.append("u.at >= %s")
            params.append(since)
        if until is not None:
            where.append("u.at < %s")
            params.append(until)
        columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        sql = (f"SELECT {columns} FROM usage_lines u JOIN events e ON e.seq = u.seq"
               f" WHERE {' AND '.join(where)} ORDER BY u.seq LIMIT %s")
        params.append(_positive(limit, "limit"))
        with self._unavailable_on_error("find_usage"):
            rows = self._read(sql, params)
        return [event_from_row(row) for row in rows]

    def iter_events(self, start_seq: int = 1, *, batch: int = 1000) -> Iterator[Event]:
        """Every event from ``start_seq`` on, in seq order, ``batch`` rows per query.

        Memory stays bounded by ``batch``; no connection is held between batches, so an
        abandoned iterator costs nothing. Events appended meanwhile are included.
        """
        batch = _positive(batch, "batch")
        next_seq = int(start_seq)
        while True:
            with self._unavailable_on_error("iter_events"):
                rows = self._read(SQL_EVENTS_FROM, (next_seq, batch))
            for row in rows:
                event = event_from_row(row)
                next_seq = event.seq + 1
                yield event
            if len(rows) < batch:
                return

    def count(self) -> int:
        """Number of event rows (a full count; :meth:`head` is the cheap figure)."""
        with self._unavailable_on_error("count"):
            rows = self._read(SQL_COUNT, ())
        return int(rows[0][0])

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last event; ``(0, GENESIS_HASH)`` for an empty ledger."""
        with self._unavailable_on_error("head"):
            rows = self._read(SQL_HEAD, ())
        if not rows:
            raise LedgerUnavailable("ledger_head row is missing")
        return int(rows[0][0]), rows[0][1]

    def verify(self, *, batch: int = 2000) -> VerifyReport:
        """Recompute the whole chain (streaming ``batch`` rows at a time, in one snapshot)
        and compare its end with the head; see :func:`verify_chain`."""
        batch = _positive(batch, "batch")
        with self._unavailable_on_error("verify"):
            with self._snapshot() as read:
                return verify_chain(read, batch=batch)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_draft(draft: EventDraft, credential_id: str | None = None) -> None:
    if draft.type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {draft.type!r}")
    if credential_id is not None and draft.credential_id != credential_id:
        raise ValueError("the event's credential_id must be the credential's")


def _positive(value: int, name: str) -> int:
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value


def open_ledger(url: str, *, pool_size: int = 4, timeout: float = 5.0) -> Ledger:
    """Open (creating or upgrading the schema if needed) the ledger at ``url``.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (parent directories are
    created), or ``postgresql://…`` / ``postgres://…``. ``pool_size`` bounds the PostgreSQL
    connections of this process; ``timeout`` (seconds) bounds connecting and waiting for a
    connection (PostgreSQL) or for the write lock (SQLite).
    """
    if url.startswith("sqlite:///"):
        from broker.ledger.sqlite import SQLiteLedger

        path = url[len("sqlite:///"):]
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError("a SQLite ledger needs a file path: sqlite:///path/to/ledger.db")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        return SQLiteLedger(path, busy_timeout=timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from broker.ledger.postgres import PostgresLedger

        return PostgresLedger(url, pool_size=pool_size, timeout=timeout)
    raise ValueError("unsupported ledger URL: expected sqlite:///… or postgresql://…")
