"""The audit API for clients that ``may: [audit]``."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from broker import errors
from broker.audit.acting import ActingAgents
from broker.common.ids import is_credential_id
from broker.http.api.common import authenticate_client, broker_context
from broker.http.api.usage import usage_json
from broker.ledger.events import utc_timestamp

bp = Blueprint("audit", __name__, url_prefix="/v1")

NO_STORE = {"Cache-Control": "no-store"}
CREDENTIAL_PARAMS = frozenset({"after", "limit", "usage_after", "usage_limit"})


def _int_arg(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.RequestMalformed(f"parameter {name} must be an integer") from None
    if not lo <= value <= hi:
        raise errors.RequestMalformed(f"parameter {name} must be between {lo} and {hi}")
    return value


@bp.get("/credentials/<credential_id>")
def credential(credential_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    authenticate_client(permission="audit")
    for name in request.args:
        if name not in CREDENTIAL_PARAMS:
            raise errors.RequestMalformed(
                "unknown parameter (allowed: " + ", ".join(sorted(CREDENTIAL_PARAMS)) + ")")
        if len(request.args.getlist(name)) > 1:
            raise errors.RequestMalformed(f"parameter {name} is repeated")
    if not is_credential_id(credential_id):
        raise errors.RequestMalformed("malformed credential id")
    ctx = broker_context()
    record = ctx.ledger.get_credential(credential_id)
    if record is None:
        raise errors.NotFound("no such credential")
    after = _int_arg("after", 0, lo=0, hi=2**62)
    limit = _int_arg("limit", 100, lo=1, hi=1000)
    # `events`: the credential's life (mint, introspect, revoke, expire…); `usage`: what was
    # done with it (one event per statement, from the database's log), paged on its own.
    events = ctx.ledger.events_for_credential(credential_id, after_seq=after,
                          limit=limit, exclude_types=("usage",))
    usage_after = _int_arg("usage_after", 0, lo=0, hi=2**62)
    usage_limit = _int_arg("usage_limit", 100, lo=1, hi=1000)
    usage = ctx.ledger.usage_for_credential(credential_id, after_seq=usage_after,
                         limit=usage_limit)
    body = {
        "credential_id": record.credential_id,
        "principal": record.principal,
        "run": record.run,
        "authorizer": record.authorizer,
        "target": record.target,
        "target_type": record.target_type,
        "scope": record.scope,
        "issuer": record.issuer,
        "issued_at": utc_timestamp(record.issued_at),
        "expires_at": utc_timestamp(record.expires_at),
        "revoked_at": utc_timestamp(record.revoked_at) if record.revoked_at is not None else None,
        "ended_at": utc_timestamp(record.ended_at) if record.ended_at is not None else None,
        "parent_id": record.parent_id,
        "act": ActingAgents(ctx.ledger).of_record(record),
        "events": [{"seq": e.seq, "type": e.type, "ts": e.ts, "details": e.details, "hash": e.hash}
                   for e in events],
    }
    if len(events) == limit:
        body["next"] = f"/v1/credentials/{credential_id}?after={events[-1].seq}&limit={limit}"
    agents = ActingAgents(ctx.ledger)
    body["usage"] = [usage_json(e, agents=agents) for e in usage]
    body["usage_next"] = None
    if len(usage) == usage_limit:
        body["usage_next"] = (f"/v1/credentials/{credential_id}?usage_after={usage[-1].seq}"
                              f"&usage_limit={usage_limit}")
    return body, 200, NO_STORE
