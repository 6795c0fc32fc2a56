"""The hash chain: the one sealer that turns drafts into chained events, and chain verification.

An event's hash is ``sha256(canonical JSON of every field but "hash")`` (see
:meth:`broker.ledger.events.Event.canonical_bytes`, the definition). :class:`Sealer` is the only
code that seals: every backend and every append path (one event, a batch, a group commit) goes
through it. :func:`verify_chain` recomputes the chain from stored columns.
"""
from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring as _ENCODE_BASESTRING  # the C speedup
from typing import Any

from broker.ledger.events import GENESIS_HASH, Event, EventDraft, VerifyReport
from broker.ledger.rows import (
    SQL_EVENTS_AFTER_HEAD,
    SQL_EVENTS_UP_TO,
    SQL_HEAD,
    Reader,
    Row,
    event_from_row,
    run_id_of,
)


class Sealer:
    """Seals the events of one batch, serialising each JSON value once.

    The hash covers exactly :meth:`Event.canonical_bytes` (the canonical body is assembled from
    the canonical texts of its values, keys in sorted order), and the row parameters are
    :func:`~broker.ledger.rows.event_params` of the sealed event, without serialising
    ``run``/``authorizer``/``details`` twice per event, and serialising a ``run`` or
    ``authorizer`` object shared by many drafts (one credential's usage) only once.
    """

    # The settings of broker.common.canonical.canonical_json, as one reusable encoder.
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


def _encode_string(value: str | None) -> str:
    """A str as json.dumps(value, ensure_ascii=False) writes it."""
    if not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    return str(_ENCODE_BASESTRING(value))


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
            bad, row_hash = _check_row(row, expected, prev_hash)
            if bad is not None:
                return bad
            prev_hash = row_hash
            expected += 1
        if len(rows) < batch:
            break
    last_seq = expected - 1
    bad = _check_head(read, last_seq, prev_hash, head_seq, head_hash)
    if bad is not None:
        return bad
    return VerifyReport(ok=True, count=last_seq)


def _check_row(row: Row, expected: int, prev_hash: str) -> tuple[VerifyReport | None, str]:
    """``(report, "")`` for a row that does not verify as event ``expected`` after
    ``prev_hash``, else ``(None, its hash)``."""
    seq = int(row[0])
    count = expected - 1
    if seq > expected:
        return VerifyReport(False, count, seq, f"missing event(s) before seq {seq}"
                            f" (expected seq {expected})"), ""
    if seq < expected:   # only possible for a first row with seq < 1
        return VerifyReport(False, count, seq, f"unexpected seq {seq}"), ""
    try:
        event = event_from_row(row)
        recomputed = event.computed_hash()
    except (TypeError, ValueError):
        return VerifyReport(False, count, seq, "row cannot be decoded"), ""
    if event.hash != recomputed:
        return VerifyReport(False, count, seq, "hash mismatch"), ""
    if event.prev_hash != prev_hash:
        return VerifyReport(False, count, seq,
                            "prev_hash does not link to the previous event"), ""
    return None, event.hash


def _check_head(read: Reader, last_seq: int, last_hash: str, head_seq: int, head_hash: str
                ) -> VerifyReport | None:
    """The last event must be ``ledger_head`` (else a deleted last row) and nothing may lie
    beyond it."""
    if last_seq != head_seq or last_hash != head_hash:
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
    return None
