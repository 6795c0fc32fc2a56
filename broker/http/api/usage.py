"""``GET /v1/usage`` — "who ran this": usage events found by statement text and time, for
clients that ``may: [audit]``.

``statement`` (optional) is a substring, matched case-insensitively (ASCII) against the
recorded (redacted) statement; ``since``/``until`` bound the time the database logged the
statement, ``[since, until)``, as RFC 3339 (``2026-03-01T10:00:00Z``), a date
(``2026-03-01``) or epoch seconds. ``after`` (a ``seq``) and ``limit`` page through hits in
ledger order; ``next`` is the URL of the following page. Each hit names the credential id,
principal, run and authorizer (the policy and its digest) the statement ran under.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, request

from broker import errors
from broker.audit.acting import ActingAgents
from broker.http.api.common import authenticate_client, broker_context
from broker.ledger.events import Event

bp = Blueprint("usage", __name__, url_prefix="/v1")

NO_STORE = {"Cache-Control": "no-store"}
PARAMS = frozenset({"statement", "since", "until", "after", "limit"})
MAX_STATEMENT = 1000
_EPOCH = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_time(name: str, raw: str) -> str:
    """An instant as RFC 3339 UTC with microseconds (how usage ``at`` is stored)."""
    text = raw.strip()
    try:
        if _EPOCH.fullmatch(text):
            moment = datetime.fromtimestamp(float(text), UTC)
        elif _DATE.fullmatch(text):
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError("no time zone")
    except (ValueError, OverflowError, OSError):
        raise errors.RequestMalformed(
            f"parameter {name} must be RFC 3339 with a zone, a date or epoch seconds") from None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def usage_json(event: Event, *, agents: ActingAgents | None = None) -> dict[str, Any]:
    """One hit. ``act``: the agent that acted for the person (delegations), when one did."""
    details = event.details or {}
    hit: dict[str, Any] = {
        "seq": event.seq,
        "ts": event.ts,
        "at": details.get("at"),
        "credential_id": event.credential_id,
        "principal": event.principal,
        "run": event.run,
        "authorizer": event.authorizer,
        "target": event.target,
    }
    for key in ("kind", "statement", "database", "session_id", "client", "command_tag",
                "duration_ms", "error", "role"):
        if key in details:
            hit[key] = details[key]
    if details.get("credential_known") is False:
        hit["credential_known"] = False
    act = agents.of(event.credential_id) if agents is not None and \
        _delegated(event.authorizer) else None
    if act is not None:
        hit["act"] = act
    return hit


def _delegated(authorizer: Any) -> bool:
    while isinstance(authorizer, dict):
        if authorizer.get("type") == "delegation":
            return True
        authorizer = authorizer.get("parent_authz")
    return False


@bp.get("/usage")
def usage() -> tuple[dict[str, Any], int, dict[str, str]]:
    authenticate_client(permission="audit")
    for name in request.args:
        if name not in PARAMS:
            raise errors.RequestMalformed("unknown parameter (allowed: " + ", ".join(sorted(PARAMS)) + ")")
        if len(request.args.getlist(name)) > 1:
            raise errors.RequestMalformed(f"parameter {name} is repeated")
    statement = request.args.get("statement") or None
    if statement is not None and len(statement) > MAX_STATEMENT:
        raise errors.RequestMalformed(f"parameter statement is longer than {MAX_STATEMENT} characters")
    since = parse_time("since", request.args["since"]) if request.args.get("since") else None
    until = parse_time("until", request.args["until"]) if request.args.get("until") else None
    if since is not None and until is not None and since >= until:
        raise errors.RequestMalformed("since must be before until")
    after = _int("after", 0, hi=2**62)
    limit = _int("limit", 100, lo=1, hi=1000)
    ledger = broker_context().ledger
    events = ledger.find_usage(statement=statement, since=since, until=until,
                          after_seq=after, limit=limit)
    agents = ActingAgents(ledger)
    body: dict[str, Any] = {"usage": [usage_json(e, agents=agents) for e in events], "next": None}
    if len(events) == limit:
        query = {k: v for k, v in (("statement", statement), ("since", request.args.get("since")),
                                   ("until", request.args.get("until"))) if v}
        body["next"] = "/v1/usage?" + urlencode({**query, "after": events[-1].seq, "limit": limit})
    return body, 200, NO_STORE


def _int(name: str, default: int, *, lo: int = 0, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 19:
        raise errors.RequestMalformed(f"parameter {name} must be an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise errors.RequestMalformed(f"parameter {name} must be between {lo} and {hi}")
    return value
