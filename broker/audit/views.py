"""The auditor's views as JSON-ready dicts, built from :mod:`broker.audit.queries`.

One implementation serves the HTTP API (``broker/http/api/lineage.py``), the CLI against a local
ledger (``broker audit … `` without ``--url``) and the web pages, so all three show the same
thing. Shapes are documented in ``docs/audit.md``.

Times of credentials (``issued_at``, ``expires_at``, ``revoked_at``, ``ended_at``) are RFC 3339
UTC, like event ``ts``. Events are rendered whole (``Event.to_dict()``: every hashed field plus
``hash``), so anyone holding the JSON can recompute each event's hash — except the usage pages
inside a lineage, which carry ``seq``, ``ts``, ``type``, ``details`` and ``hash`` only (the
run, principal and authorizer are the credential's; ``usage.next`` links to whole events).
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from broker.audit.acting import ActingAgents
from broker.audit.params import encode_cursor
from broker.audit.queries import AuditQueries, UsageSummary
from broker.ledger import CredentialRecord, Event, Ledger, utc_timestamp
from broker.lifecycle import liveness


class NotFound(LookupError):
    """The credential, run or principal has no record in the ledger."""


def _ts(epoch: int | None) -> str | None:
    return None if epoch is None else utc_timestamp(epoch)


def credential_status(record: CredentialRecord, *, now: float | None = None) -> str:
    """``revoked`` | ``expired`` | ``active`` (``ended_at`` says the backend resource is gone)."""
    state = liveness.state_of(record, now=time.time() if now is None else now)
    if state is None:
        return "active"
    return "revoked" if state == liveness.REVOKED else "expired"


def credential_json(record: CredentialRecord, *, now: float | None = None) -> dict[str, Any]:
    return {
        "credential_id": record.credential_id,
        "parent_id": record.parent_id,
        "principal": record.principal,
        "issuer": record.issuer,
        "run": record.run,
        "authorizer": record.authorizer,
        "target": record.target,
        "target_type": record.target_type,
        "scope": record.scope,
        "issued_at": _ts(record.issued_at),
        "expires_at": _ts(record.expires_at),
        "revoked_at": _ts(record.revoked_at),
        "ended_at": _ts(record.ended_at),
        "status": credential_status(record, now=now),
    }


def event_json(event: Event) -> dict[str, Any]:
    return event.to_dict()


def events_url(**params: Any) -> str:
    return "/v1/events?" + urlencode({k: v for k, v in params.items() if v is not None})


def usage_json(credential_id: str, summary: UsageSummary | None) -> dict[str, Any]:
    summary = summary or UsageSummary(count=0)
    body: dict[str, Any] = {"count": summary.count,
                            "events": [{"seq": e.seq, "ts": e.ts, "type": "usage",
                                        "details": e.details, "hash": e.hash}
                                       for e in summary.first], "next": None}
    if summary.count > len(summary.first):
        filters = {"type": "usage", "credential_id": credential_id}
        after = summary.first[-1].seq if summary.first else 0
        body["next"] = events_url(**filters, cursor=encode_cursor(after, filters))
    return body


def node_json(record: CredentialRecord, *, usage: dict[str, UsageSummary],
              lifecycle: dict[str, list[Event]], now: float) -> dict[str, Any]:
    """A credential in a lineage: its row, the event that minted it, revocations, expiries,
    approvals and usage."""
    events = lifecycle.get(record.credential_id, [])
    mint = next((e for e in events if e.type == "mint"), None)
    return {
        **credential_json(record, now=now),
        "mint": None if mint is None else {"seq": mint.seq, "ts": mint.ts, "hash": mint.hash},
        "revocations": [event_json(e) for e in events if e.type == "revoke"],
        "expiries": [event_json(e) for e in events if e.type == "expire"],
        "approvals": [event_json(e) for e in events
                      if e.type in ("approval_requested", "approved", "denied")],
        "usage": usage_json(record.credential_id, usage.get(record.credential_id)),
    }


def forest(records: Iterable[CredentialRecord], node: Any) -> list[dict[str, Any]]:
    """Nest ``records`` by ``parent_id``: a record whose parent is not among them is a root.
    Children are in creation order (the mint event's ``seq``); every node gets ``children``."""
    records = list(records)
    by_id = {r.credential_id: node(r) for r in records}

    def order(record: CredentialRecord) -> tuple[int, int, str]:
        mint = by_id[record.credential_id].get("mint") or {}    # seq: exact creation order
        return record.issued_at, int(mint.get("seq") or 0), record.credential_id

    roots: list[dict[str, Any]] = []
    for record in sorted(records, key=order):
        entry = by_id[record.credential_id]
        entry.setdefault("children", [])
        parent = by_id.get(record.parent_id) if record.parent_id else None
        if parent is None or parent is entry:
            roots.append(entry)
        else:
            parent.setdefault("children", []).append(entry)
    return roots


# -- the views -------------------------------------------------------------------------------

def lineage_view(ledger: Ledger, credential_id: str, *, max_depth: int = 16, limit: int = 1000,
                 usage_limit: int = 10, now: float | None = None) -> dict[str, Any]:
    """``GET /v1/credentials/<id>/lineage``. Raises :class:`NotFound`."""
    now = time.time() if now is None else now
    result = AuditQueries(ledger).lineage(credential_id, max_depth=max_depth, limit=limit,
                            usage_limit=usage_limit)
    if result is None:
        raise NotFound("no such credential")

    agents = ActingAgents(ledger)

    def node(record: CredentialRecord) -> dict[str, Any]:
        body = node_json(record, usage=result.usage, lifecycle=result.lifecycle, now=now)
        body["act"] = agents.of_record(record)     # the agent acting for the person, if any
        return body

    chain = [result.credential, *result.ancestors]
    return {
        "credential": node(result.credential),
        "ancestors": [node(r) for r in result.ancestors],
        "root_id": chain[-1].credential_id,
        "root_authorizer": chain[-1].authorizer,
        "descendants": forest([r for r, _ in result.descendants], node),
        "descendant_count": len(result.descendants),
        "max_depth": max_depth,
        "truncated": result.descendants_truncated,
        "depth_limited": result.depth_reached,
    }


def run_view(ledger: Ledger, run_id: str, *, max_depth: int = 16, limit: int = 1000,
             usage_limit: int = 10, now: float | None = None) -> dict[str, Any]:
    """``GET /v1/runs/<run id>``. Raises :class:`NotFound` when neither a credential nor a
    denied attempt carries the run id."""
    now = time.time() if now is None else now
    result = AuditQueries(ledger).run_lineage(run_id, max_depth=max_depth, limit=limit,
                                usage_limit=usage_limit)
    if not result.credentials and not result.denied:
        raise NotFound("no such run")

    def node(record: CredentialRecord) -> dict[str, Any]:
        return node_json(record, usage=result.usage, lifecycle=result.lifecycle, now=now)

    attempts: list[Any] = []
    for run in [c.run for c in result.credentials] + [e.run for e in result.denied]:
        attempt = run.get("attempt") if isinstance(run, dict) else None
        if attempt is not None and attempt not in attempts:
            attempts.append(attempt)
    in_run = {c.credential_id for c in result.credentials}
    return {
        "run_id": result.run_id,
        "attempts": sorted(attempts, key=str),
        "credentials": forest([*result.credentials, *(r for r, _ in result.descendants)], node),
        "credential_ids": sorted(in_run),
        "credential_count": len(result.credentials),
        "descendant_count": len(result.descendants),
        "denied": [event_json(e) for e in result.denied],
        "truncated": result.credentials_truncated or result.descendants_truncated,
        "denied_truncated": result.denied_truncated,
    }


def principal_view(ledger: Ledger, principal: str, *, since: str, until: str, limit: int = 100,
                   usage_limit: int = 0, now: float | None = None) -> dict[str, Any]:
    """``GET /v1/principals/<principal>``. Raises :class:`NotFound` when nothing in the window
    and nothing ever recorded names the principal."""
    now = time.time() if now is None else now
    result = AuditQueries(ledger).principal_activity(principal, since=since, until=until, limit=limit,
                                       usage_limit=usage_limit)
    if not result.credentials and not result.denied:
        if not ledger.search_events(principal=principal, limit=1):
            raise NotFound("no such principal")
    return {
        "principal": principal,
        "since": since,
        "until": until,
        "credentials": [{**credential_json(c, now=now),
                         "usage": usage_json(c.credential_id, result.usage.get(c.credential_id))}
                        for c in result.credentials],
        "credentials_truncated": result.credentials_truncated,
        "denied": [event_json(e) for e in result.denied],
        "denied_truncated": result.denied_truncated,
    }


def events_view(ledger: Ledger, *, filters: dict[str, Any], after_seq: int = 0,
                limit: int = 100) -> dict[str, Any]:
    """``GET /v1/events``: one page, in ``seq`` order. ``filters`` holds ``type``,
    ``principal``, ``credential_id``, ``since``, ``until`` (None = not filtered), exactly as
    the client sent them (the cursor binds to them)."""
    from broker.audit.params import parse_instant

    since = parse_instant(filters["since"]) if filters.get("since") else None
    until = parse_instant(filters["until"]) if filters.get("until") else None
    events = ledger.search_events(type=filters.get("type"), principal=filters.get("principal"),
                                  credential_id=filters.get("credential_id"), since=since,
                                  until=until, after_seq=after_seq, limit=limit + 1)
    page = events[:limit]
    body: dict[str, Any] = {"events": [event_json(e) for e in page], "next_cursor": None,
                            "next": None}
    if len(events) > limit:
        cursor = encode_cursor(page[-1].seq, filters)
        body["next_cursor"] = cursor
        body["next"] = events_url(**{k: v for k, v in filters.items() if v is not None},
                                  cursor=cursor, limit=limit)
    return body
