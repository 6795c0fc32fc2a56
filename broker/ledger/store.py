"""The ledger's public protocol, :class:`Ledger`, implemented by the SQLite and PostgreSQL backends.

Everything outside ``broker/ledger/`` uses only the public methods below: appends (one event,
a guarded event with extra statements, batches, usage with dedupe), credential and event
queries, and three primitives for stores that keep their own tables in the same database and
transactions (people's approvals and delegations, the Merkle tree, checkpoints, the audit read
model): :meth:`Ledger.read`, :meth:`Ledger.snapshot` and :meth:`Ledger.transaction`.

Every write that adds an event is one transaction that

1. locks the single ``ledger_head`` row (PostgreSQL ``SELECT … FOR UPDATE``; SQLite
   ``BEGIN IMMEDIATE``, which takes the database's one write lock), reading the last
   ``seq``/``hash``/``ts``;
2. optionally runs a *guard* (``UPDATE credentials … RETURNING``) and gives up, appending
   nothing, when it touches no row;
3. seals the event (:class:`broker.ledger.chain.Sealer`, the one sealer) with the next
   ``seq``, a ``ts`` taken while the lock is held, and the previous hash; inserts it; moves the
   head; runs any extra statement (the credential row of a mint); commits.

So however many threads and processes append, there is one chain, ``seq`` is contiguous and
time order equals ``seq`` order.
"""
from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, overload

from broker.common.canonical import sha256_hex
from broker.ledger.chain import Sealer, verify_chain
from broker.ledger.errors import LedgerUnavailable
from broker.ledger.events import (
    EVENT_TYPES,
    KEYED_EVENT_TYPES,
    CredentialRecord,
    Event,
    EventDraft,
    VerifyReport,
    utc_timestamp,
)
from broker.ledger.group import GroupCommitter, Item
from broker.ledger.rows import (
    CREDENTIAL_COLUMNS,
    EVENT_COLUMNS,
    EVENT_INSERT_COLUMNS,
    SQL_ANCESTORS,
    SQL_CHILDREN,
    SQL_CLAIM_SINGLE_USE,
    SQL_COUNT,
    SQL_DESCENDANTS,
    SQL_EVENTS_FOR_CREDENTIAL,
    SQL_EVENTS_FROM,
    SQL_GET_CREDENTIAL,
    SQL_HEAD,
    SQL_INSERT_CREDENTIAL,
    SQL_INSERT_EVENT,
    SQL_INSERT_LINEAGE,
    SQL_INSERT_USAGE_LINE,
    SQL_IS_REVOKED,
    SQL_MOVE_HEAD,
    SQL_PRUNE_SINGLE_USE,
    SQL_SET_ENDED,
    SQL_SET_REVOKED,
    SQL_SET_REVOKED_AND_ENDED,
    SQL_UNCLAIM_SINGLE_USE,
    USAGE_LINE_COLUMNS,
    Params,
    Reader,
    Row,
    Statement,
    Transaction,
    credential_from_row,
    credential_params,
    event_from_row,
    lineage_params,
    statement_fingerprint,
    usage_count_statements,
    usage_statement_statements,
)

#: Keys per ``IN (…)`` probe of ``usage_lines`` (well under SQLite's variable limit).
_USAGE_KEY_CHUNK = 500
#: Seconds between prunes of lapsed single uses (``attestation_uses``), per process.
PRUNE_EVERY = 60.0
#: Parameters per ``IN (…)`` list (SQLite's default limit is 32766 variables).
_IN_CHUNK = 900
#: "Who ran this": at most this many distinct statements matching a search are read through
#: the fingerprint index; beyond, one scan of the usage lines is cheaper.
_MAX_FINGERPRINTS = 500
#: SQLite allows at most 500 terms in one compound SELECT.
_UNION_CHUNK = 200


class Ledger(abc.ABC):
    """The ledger: append events to one hash chain and query events and credentials.

    Thread-safe. Each process opens its own (see :func:`open_ledger`); many processes may
    share one database. Any database failure raises :class:`LedgerUnavailable`.
    """

    #: Exceptions of the driver that mean "the database failed" (mapped to LedgerUnavailable).
    _db_errors: tuple[type[BaseException], ...] = ()
    #: ``"sqlite"`` or ``"postgres"``: stores with their own SQL may use dialect features
    #: (arrays, LATERAL) where the backend has them.
    dialect: str = ""

    # -- backend primitives ----------------------------------------------------------------
    @abc.abstractmethod
    def read(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one read statement (its own implicit transaction) and return all rows. Driver
        errors propagate: wrap calls in :meth:`unavailable_on_error`."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A read-write transaction, committed when the block ends, rolled back on error
        (SQLite: ``BEGIN IMMEDIATE``, the database's write lock). For tables beside the chain
        (the Merkle tree, checkpoints, approval poll clocks); never adds an event."""

    @abc.abstractmethod
    def snapshot(self) -> AbstractContextManager[Reader]:
        """A reader whose statements all see one consistent snapshot of the database."""

    @abc.abstractmethod
    def _commit_items(self, items: list[Item]) -> None:
        """Backend hook: one chain transaction for ``items``, in order (see the module
        docstring and :mod:`broker.ledger.group`): each item's guard runs first (an item whose
        guard matches nothing gets ``event = None`` and writes nothing), then its event is
        sealed after the previous one and its extra statements run. Sets ``item.event``."""

    def _append_one(self, draft: EventDraft, *, guard: Statement | None,
                    extra: Sequence[Statement], claim: Statement | None = None,
                    unclaim: Statement | None = None) -> Event | None:
        """One event through the group committer: shares a transaction with whatever other
        threads of this process are appending at the same moment."""
        group: GroupCommitter | None = self.__dict__.get("_group")
        if group is None:
            group = self.__dict__.setdefault("_group", GroupCommitter(self._commit_guarded))
        if draft.type == "usage":           # the usage_counts projection, same transaction
            extra = (*extra, *usage_count_statements([draft.credential_id]))
        return group.submit(Item(draft=draft, guard=guard, extra=tuple(extra), claim=claim,
                                 unclaim=unclaim))

    def _commit_guarded(self, items: list[Item]) -> None:
        with self.unavailable_on_error("append"):
            self._commit_items(items)

    @abc.abstractmethod
    def _merge_details(self, credential_id: str, details: dict[str, Any]) -> bool:
        """Backend hook: merge ``details`` into a credential row's details, atomically;
        False if unknown."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The ledger cannot be used afterwards."""

    # -- errors ----------------------------------------------------------------------------
    @contextmanager
    def unavailable_on_error(self, action: str) -> Iterator[None]:
        """Driver errors inside the block become :class:`LedgerUnavailable` (generic text)."""
        try:
            yield
        except self._db_errors as exc:
            # Generic message only: driver messages may name hosts; never a DSN or password.
            raise LedgerUnavailable(f"ledger database error during {action}") from exc

    # -- writes ----------------------------------------------------------------------------
    @overload
    def append(self, draft: EventDraft) -> Event: ...
    @overload
    def append(self, draft: EventDraft, *, guard: Statement,
               extra: Sequence[Statement] = ()) -> Event | None: ...
    @overload
    def append(self, draft: EventDraft, *, guard: None = None,
               extra: Sequence[Statement]) -> Event: ...

    def append(self, draft: EventDraft, *, guard: Statement | None = None,
               extra: Sequence[Statement] = ()) -> Event | None:
        """Append one event; assigns ``seq``, ``ts``, ``prev_hash`` and ``hash``.

        With ``guard`` (a statement ``… RETURNING`` run first under the head lock) nothing is
        written and None is returned when the guard touches no row. ``extra`` statements run
        after the event, in the same transaction (a projection row: an approval, a delegation)."""
        check_draft(draft)
        with self.unavailable_on_error("append"):
            event = self._append_one(draft, guard=guard, extra=tuple(extra))
        assert event is not None or guard is not None
        return event

    def record_mint(self, draft: EventDraft, credential: CredentialRecord, *,
                    guard: Statement | None = None, extra: Sequence[Statement] = (),
                    single_use: tuple[str, int] | None = None,
                    now: int | None = None) -> Event | None:
        """Append the mint event and insert the credential row, in one transaction.

        ``single_use`` ``(key, until)`` anchors an attestation's single use here: the mint
        claims the key (stored as its SHA-256) until ``until`` (epoch seconds), atomically with
        the event, across every broker sharing this database; a key already claimed and not yet
        past its ``until`` (at ``now``) raises :class:`SingleUseTaken`, writing nothing.
        With ``guard`` (e.g. consuming the approval it was minted under) nothing is written and
        None is returned when the guard touches no row; ``extra`` statements run after the
        credential row (e.g. linking it to its delegation)."""
        check_draft(draft, credential.credential_id)
        claim = unclaim = None
        if single_use is not None:
            key_sha256 = sha256_hex(single_use[0].encode("utf-8"))
            moment = int(time.time()) if now is None else int(now)
            claim = (SQL_CLAIM_SINGLE_USE,
                     (key_sha256, int(single_use[1]), credential.credential_id, moment))
            unclaim = (SQL_UNCLAIM_SINGLE_USE, (key_sha256, credential.credential_id))
        with self.unavailable_on_error("record_mint"):
            event = self._append_one(draft, guard=guard,
                                     extra=[(SQL_INSERT_CREDENTIAL, credential_params(credential)),
                                            (SQL_INSERT_LINEAGE, lineage_params(credential)),
                                            *extra],
                                     claim=claim, unclaim=unclaim)
        assert event is not None or guard is not None
        if single_use is not None:
            self._prune_when_due(int(time.time()) if now is None else int(now))
        return event

    def _prune_when_due(self, now: int) -> None:
        """At most once per :data:`PRUNE_EVERY` seconds per process, after a mint: forget
        lapsed single uses (best effort; the next mint's process tries again)."""
        due: float = self.__dict__.get("_next_prune", 0.0)
        clock = time.monotonic()
        if clock < due:
            return
        self.__dict__["_next_prune"] = clock + PRUNE_EVERY
        try:
            self.prune_single_use(now=now)
        except LedgerUnavailable:
            pass

    def prune_single_use(self, *, now: int) -> int:
        """Forget attestations whose single use has lapsed (they could no longer be accepted:
        past their ``exp`` plus leeway); returns how many rows went. The reaper calls it."""
        with self.unavailable_on_error("prune_single_use"), self.transaction() as tx:
            rows = tx.execute(SQL_PRUNE_SINGLE_USE + " RETURNING key_sha256", (int(now),))
        return len(rows)

    def record_revoke(self, credential_id: str, draft: EventDraft, *,
                      revoked_at: int, ended_at: int | None = None) -> Event | None:
        """Set ``revoked_at`` and append ``draft``, atomically. None, appending nothing, when
        the credential is unknown or already revoked. With ``ended_at`` (the backend resource
        was removed before this call) ``ended_at`` is set too, unless already set."""
        check_draft(draft, credential_id)
        guard: Statement
        if ended_at is None:
            guard = (SQL_SET_REVOKED, (int(revoked_at), credential_id))
        else:
            guard = (SQL_SET_REVOKED_AND_ENDED, (int(revoked_at), int(ended_at), credential_id))
        with self.unavailable_on_error("record_revoke"):
            return self._append_one(draft, guard=guard, extra=())

    def record_end(self, credential_id: str, draft: EventDraft, *,
                   ended_at: int) -> Event | None:
        """Set ``ended_at`` (the backend resource is gone) and append ``draft``, atomically.
        None, appending nothing, when the credential is unknown or already ended."""
        check_draft(draft, credential_id)
        with self.unavailable_on_error("record_end"):
            return self._append_one(draft, guard=(SQL_SET_ENDED, (int(ended_at), credential_id)),
                                    extra=())

    def append_many(self, drafts: Sequence[EventDraft]) -> list[Event]:
        """Append several events in one transaction (one head lock, one commit), in order."""
        for draft in drafts:
            check_draft(draft)
        if not drafts:
            return []
        with self.unavailable_on_error("append_many"):
            return self._append_batch([(draft, None) for draft in drafts])

    def record_usage(self, items: Sequence[tuple[EventDraft, str, str, str | None]]) -> list[Event]:
        """Append ``usage`` events (and the gateway's ``connect``/``disconnect``/``gateway``),
        each ``(draft, line_key, at, statement)``, in one transaction, skipping every item whose
        ``line_key`` is already recorded (or repeats within the batch): re-reading a log or
        re-draining a spool records nothing twice. ``at`` is when it happened (RFC 3339 UTC);
        ``statement`` the (redacted) text, for searching. Returns the events appended."""
        for draft, _, _, _ in items:
            check_draft(draft)
            if draft.type not in KEYED_EVENT_TYPES:
                raise ValueError("record_usage takes usage and gateway events only")
        if not items:
            return []
        with self.unavailable_on_error("record_usage"):
            return self._append_batch([(draft, (key, at, statement))
                                       for draft, key, at, statement in items])

    def _append_batch(self, items: Sequence[tuple[EventDraft, tuple[str, str, str | None] | None]]
                      ) -> list[Event]:
        """One chain transaction for many events (see the module docstring); an item's usage
        line, when given, is deduplicated on its key and written to ``usage_lines``."""
        with self.transaction() as tx:
            head = tx.execute(SQL_HEAD + tx.lock_suffix)
            if not head:
                raise LedgerUnavailable("ledger_head row is missing")
            seq, prev_hash, head_ts = int(head[0][0]), head[0][1], head[0][2]
            keys = list(dict.fromkeys(line[0] for _, line in items if line is not None))
            seen = self._recorded_line_keys(tx, keys)
            ts = max(utc_timestamp(), head_ts)     # one ts for the batch, never below the head's
            sealer = Sealer()
            events: list[Event] = []
            event_rows: list[tuple[Any, ...]] = []
            usage_rows: list[tuple[Any, ...]] = []
            statements: dict[str, str] = {}
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
                    # "who ran this" searches the statements of usage events (schema v10)
                    fingerprint = None
                    if draft.type == "usage" and line[2] is not None:
                        fingerprint = statement_fingerprint(line[2])
                        statements.setdefault(fingerprint, line[2])
                    usage_rows.append((seq, line[0], event.credential_id or "", line[1], line[2],
                                       fingerprint))
            if events:
                tx.insert_rows("events", EVENT_INSERT_COLUMNS, SQL_INSERT_EVENT, event_rows)
                if usage_rows:
                    tx.insert_rows("usage_lines", USAGE_LINE_COLUMNS, SQL_INSERT_USAGE_LINE,
                                   usage_rows)
                for sql, params in (*usage_count_statements([e.credential_id for e in events
                                                             if e.type == "usage"], self.dialect),
                                    *usage_statement_statements(statements, self.dialect)):
                    tx.execute(sql, params)
                tx.execute(SQL_MOVE_HEAD, (seq, prev_hash, head_ts))
        return events

    def _recorded_line_keys(self, tx: Transaction, keys: list[str]) -> set[str]:
        """Which of ``keys`` ``usage_lines`` already holds: one array parameter on PostgreSQL
        (a short text psycopg parses once), ``IN (…)`` chunks on SQLite."""
        if not keys:
            return set()
        if self.dialect == "postgres":
            return {row[0] for row in tx.execute(
                "SELECT line_key FROM usage_lines WHERE line_key = ANY(%s)", (keys,))}
        seen: set[str] = set()
        for start in range(0, len(keys), _USAGE_KEY_CHUNK):
            chunk = keys[start:start + _USAGE_KEY_CHUNK]
            rows = tx.execute("SELECT line_key FROM usage_lines WHERE line_key IN"
                              f" ({', '.join(['%s'] * len(chunk))})", chunk)
            seen.update(row[0] for row in rows)
        return seen

    def update_credential_details(self, credential_id: str, details: dict[str, Any]) -> bool:
        """Merge non-secret backend facts (role name, lease id) into the credential's details
        (top-level keys of ``details`` replace existing ones). False if the id is unknown.
        Not an event: ``details`` of the credential row are not part of the chain."""
        with self.unavailable_on_error("update_credential_details"):
            return self._merge_details(credential_id, dict(details))

    # -- credential queries ----------------------------------------------------------------
    def get_credential(self, credential_id: str) -> CredentialRecord | None:
        with self.unavailable_on_error("get_credential"):
            rows = self.read(SQL_GET_CREDENTIAL, (credential_id,))
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
        with self.unavailable_on_error("credential_by_backend_user"):
            rows = self.read(sql, params)
        return credential_from_row(rows[0]) if rows else None

    def is_revoked(self, credential_id: str) -> bool:
        """True when the credential has been revoked (False for an unknown id)."""
        with self.unavailable_on_error("is_revoked"):
            rows = self.read(SQL_IS_REVOKED, (credential_id,))
        return bool(rows) and rows[0][0] is not None

    def children_of(self, credential_id: str) -> list[CredentialRecord]:
        """Credentials whose ``parent_id`` is ``credential_id``, in creation order."""
        with self.unavailable_on_error("children_of"):
            rows = self.read(SQL_CHILDREN, (credential_id,))
        return [credential_from_row(row) for row in rows]

    def ancestors_of(self, credential_id: str, *, max_depth: int = 32) -> list[CredentialRecord]:
        """The credential itself, then its parent, … up to its root, at most ``max_depth``
        steps up (one query; empty for an unknown id)."""
        with self.unavailable_on_error("ancestors_of"):
            rows = self.read(SQL_ANCESTORS, (credential_id, _positive(max_depth, "max_depth")))
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
        with self.unavailable_on_error("descendants_of"):
            rows = self.read(SQL_DESCENDANTS, (credential_id, _positive(max_depth, "max_depth"),
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
        with self.unavailable_on_error("find_credentials"):
            rows = self.read(sql, params)
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
        with self.unavailable_on_error("credentials_to_end"):
            rows = self.read(sql, params)
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
        with self.unavailable_on_error("events_for_credential"):
            rows = self.read(sql, params)
        return [event_from_row(row) for row in rows]

    def usage_for_credential(self, credential_id: str, *, after_seq: int = 0,
                             limit: int = 100) -> list[Event]:
        """``usage`` events of ``credential_id`` with ``seq > after_seq``, in seq order."""
        with self.unavailable_on_error("usage_for_credential"):
            rows = self.read(f"SELECT {EVENT_COLUMNS} FROM events WHERE credential_id = %s"
                              " AND type = 'usage' AND seq > %s ORDER BY seq LIMIT %s",
                              (credential_id, int(after_seq), _positive(limit, "limit")))
        return [event_from_row(row) for row in rows]

    def find_usage(self, *, statement: str | None = None, since: str | None = None,
                   until: str | None = None, after_seq: int = 0, limit: int = 100) -> list[Event]:
        """``usage`` events whose statement contains ``statement`` (case-insensitive for
        ASCII) and that ran in ``[since, until)`` (RFC 3339 UTC as
        :func:`~broker.ledger.events.utc_timestamp` writes it, compared with the time the
        database logged), ``seq > after_seq``, in seq order, at most ``limit``.

        With ``statement`` (schema version 10): the text is matched against the distinct
        statements (``usage_statements``), then each matching statement's lines are read from
        ``usage_lines (fingerprint, seq, at)`` in seq order, ``limit`` at most per statement, and
        merged; more than :data:`_MAX_FINGERPRINTS` matching statements (statements written with
        their literals inline) fall back to one scan of the usage lines in seq order."""
        limit = _positive(limit, "limit")
        pattern = None
        if statement:
            escaped = statement.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
        with self.unavailable_on_error("find_usage"):
            if pattern is not None:
                rows = self.read("SELECT fingerprint FROM usage_statements"
                                 " WHERE lower(statement) LIKE %s ESCAPE '\\' LIMIT %s",
                                 (pattern, _MAX_FINGERPRINTS + 1))
                if len(rows) <= _MAX_FINGERPRINTS:
                    seqs = self._usage_seqs([r[0] for r in rows], since=since, until=until,
                                            after_seq=int(after_seq), limit=limit)
                    if not seqs:
                        return []
                    found = self.read(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN"
                                      f" ({', '.join(['%s'] * len(seqs))}) AND type = 'usage'"
                                      " ORDER BY seq", seqs)
                    return [event_from_row(row) for row in found]
            where: list[str] = ["u.seq > %s", "e.type = 'usage'"]
            params: list[Any] = [int(after_seq)]
            if pattern is not None:
                where.append("lower(u.statement) LIKE %s ESCAPE '\\'")
                params.append(pattern)
            if since is not None:
                where.append("u.at >= %s")
                params.append(since)
            if until is not None:
                where.append("u.at < %s")
                params.append(until)
            columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
            sql = (f"SELECT {columns} FROM usage_lines u JOIN events e ON e.seq = u.seq"
                   f" WHERE {' AND '.join(where)} ORDER BY u.seq LIMIT %s")
            params.append(limit)
            rows = self.read(sql, params)
        return [event_from_row(row) for row in rows]

    def _usage_seqs(self, fingerprints: Sequence[str], *, since: str | None, until: str | None,
                    after_seq: int, limit: int) -> list[int]:
        """The first ``limit`` seqs (``> after_seq``, ``at`` in ``[since, until)``) of the usage
        lines of ``fingerprints``: one bounded range of ``usage_lines_fingerprint_idx`` each."""
        if not fingerprints:
            return []
        window, bounds = "", []
        if since is not None:
            window += " AND at >= %s"
            bounds.append(since)
        if until is not None:
            window += " AND at < %s"
            bounds.append(until)
        one = f"SELECT seq FROM usage_lines WHERE fingerprint = %s AND seq > %s{window} ORDER BY seq LIMIT %s"
        seqs: list[int] = []
        if self.dialect == "postgres":
            rows = self.read(f"SELECT u.seq FROM unnest(%s::text[]) AS f(fp) CROSS JOIN LATERAL"
                             f" ({one.replace('= %s AND seq', '= f.fp AND seq', 1)}) AS u"
                             " ORDER BY u.seq LIMIT %s",
                             (list(fingerprints), after_seq, *bounds, limit, limit))
            return [int(r[0]) for r in rows]
        for start in range(0, len(fingerprints), _UNION_CHUNK):
            chunk = fingerprints[start:start + _UNION_CHUNK]
            sql = " UNION ALL ".join(f"SELECT * FROM ({one}) AS f{i}" for i in range(len(chunk)))
            params: list[Any] = []
            for fingerprint in chunk:
                params.extend([fingerprint, after_seq, *bounds, limit])
            seqs.extend(int(r[0]) for r in self.read(sql + " ORDER BY 1 LIMIT %s", [*params, limit]))
        return sorted(seqs)[:limit]

    def iter_events(self, start_seq: int = 1, *, batch: int = 1000) -> Iterator[Event]:
        """Every event from ``start_seq`` on, in seq order, ``batch`` rows per query.

        Memory stays bounded by ``batch``; no connection is held between batches, so an
        abandoned iterator costs nothing. Events appended meanwhile are included.
        """
        batch = _positive(batch, "batch")
        next_seq = int(start_seq)
        while True:
            with self.unavailable_on_error("iter_events"):
                rows = self.read(SQL_EVENTS_FROM, (next_seq, batch))
            for row in rows:
                event = event_from_row(row)
                next_seq = event.seq + 1
                yield event
            if len(rows) < batch:
                return

    def search_events(self, *, type: str | None = None, principal: str | None = None,
                      credential_id: str | None = None, run_id: str | None = None,
                      since: str | None = None, until: str | None = None, after_seq: int = 0,
                      limit: int = 100) -> list[Event]:
        """Events matching every given filter with ``seq > after_seq``, in ``seq`` order, at
        most ``limit``. ``since``/``until`` bound ``ts`` as ``[since, until)``."""
        limit = _bounded(limit, "limit", 1, 100_000)
        where: list[str] = ["seq > %s"]
        params: list[Any] = [int(after_seq)]
        for column, value in (("type", type), ("principal", principal),
                              ("credential_id", credential_id), ("run_id", run_id)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        with self.unavailable_on_error("search_events"):
            if since is not None or until is not None:
                lo, hi = seq_range(self.read, since, until)
                if lo is None:
                    return []
                where.append("seq >= %s AND seq <= %s")
                params.extend([lo, hi])
            rows = self.read(f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
                             " ORDER BY seq LIMIT %s", [*params, limit])
        return [event_from_row(r) for r in rows]

    def credentials_by_id(self, credential_ids: Sequence[str]) -> dict[str, CredentialRecord]:
        """The credential rows of ``credential_ids`` that exist, by id."""
        found: dict[str, CredentialRecord] = {}
        ids = sorted(set(credential_ids))
        with self.unavailable_on_error("credentials_by_id"):
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start:start + _IN_CHUNK]
                rows = self.read(f"SELECT {CREDENTIAL_COLUMNS} FROM credentials"
                                 f" WHERE credential_id IN ({', '.join(['%s'] * len(chunk))})",
                                 chunk)
                for row in rows:
                    record = credential_from_row(row)
                    found[record.credential_id] = record
        return found

    def count(self) -> int:
        """Number of event rows (a full count; :meth:`head` is the cheap figure)."""
        with self.unavailable_on_error("count"):
            rows = self.read(SQL_COUNT, ())
        return int(rows[0][0])

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last event; ``(0, GENESIS_HASH)`` for an empty ledger."""
        with self.unavailable_on_error("head"):
            rows = self.read(SQL_HEAD, ())
        if not rows:
            raise LedgerUnavailable("ledger_head row is missing")
        return int(rows[0][0]), rows[0][1]

    def verify(self, *, batch: int = 2000) -> VerifyReport:
        """Recompute the whole chain (streaming ``batch`` rows at a time, in one snapshot)
        and compare its end with the head; see :func:`verify_chain`."""
        batch = _positive(batch, "batch")
        with self.unavailable_on_error("verify"):
            with self.snapshot() as read:
                return verify_chain(read, batch=batch)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_draft(draft: EventDraft, credential_id: str | None = None) -> None:
    if draft.type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {draft.type!r}")
    if credential_id is not None and draft.credential_id != credential_id:
        raise ValueError("the event's credential_id must be the credential's")


def _positive(value: int, name: str) -> int:
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value


def seq_range(read: Reader, since: str | None, until: str | None
              ) -> tuple[int | None, int | None]:
    """``(lo, hi)``: the first and last ``seq`` with ``since <= ts < until``; ``(None, None)``
    when no event lies in the window. Two probes on the ``events (ts)`` index (event time
    order equals ``seq`` order: ``ts`` is sealed under the chain lock and never goes back)."""
    if since is not None:
        rows = read("SELECT seq FROM events WHERE ts >= %s ORDER BY ts, seq LIMIT 1", (since,))
        if not rows:
            return None, None
        lo = int(rows[0][0])
    else:
        lo = 1
    if until is not None:
        rows = read("SELECT seq FROM events WHERE ts < %s ORDER BY ts DESC, seq DESC LIMIT 1",
                    (until,))
        if not rows:
            return None, None
        hi = int(rows[0][0])
    else:
        rows = read("SELECT seq FROM ledger_head WHERE id = 1", ())
        hi = int(rows[0][0]) if rows else 0
    if hi < lo:
        return None, None
    return lo, hi


def _bounded(value: int, name: str, lo: int, hi: int) -> int:
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return value
