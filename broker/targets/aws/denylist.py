"""Revocation of AWS sessions: a deny statement on the role, keyed by source identity. Pure.

AWS cannot end one session early. What it can do is refuse everything a session asks for: the
role gets an inline policy (``deny_policy_name``, default ``nhi-broker-revoked``) whose
statements deny every action to the sessions whose ``aws:SourceIdentity`` — the credential id,
set by the web-identity token and unchangeable — is listed::

    {"Version": "2012-10-17",
     "Statement": [{"Sid": "NhiBrokerRevokedUntil1767225600", "Effect": "Deny",
                    "Action": "*", "Resource": "*",
                    "Condition": {"StringEquals": {"aws:SourceIdentity": ["01k…", "01k…"]}}}]}

An explicit deny in the role's own policy wins over every allow, for every session of the role,
including sessions chained from it inside the same role. Entries are grouped by when their
sessions end (rounded up to :data:`BUCKET_SECONDS`): the ``Sid`` says it, so a statement whose
sessions have all expired is dropped at the next revocation (:data:`EXPIRY_SLACK` later, for
clock skew) and the document stays small without any state outside it. Statements of other
``Sid`` s in the same policy are kept as they are.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote

from broker.targets.aws.schema import compact_json

SID_PREFIX = "NhiBrokerRevokedUntil"
BUCKET_SECONDS = 900
EXPIRY_SLACK = 300
#: IAM's limit on a role's inline policies (all of them together, whitespace not counted).
MAX_INLINE_POLICY = 10_240
_SID = re.compile(SID_PREFIX + r"(\d+)")
CONDITION_KEY = "aws:SourceIdentity"


class DenyListFull(Exception):
    """The deny policy would exceed IAM's size limit."""


def parse_document(raw: Any) -> dict[str, Any]:
    """A role policy as IAM returns it (botocore decodes it; a URL-encoded JSON string is
    accepted too); an empty document when there is none."""
    if raw is None:
        return {"Version": "2012-10-17", "Statement": []}
    if isinstance(raw, str):
        raw = json.loads(unquote(raw))
    if not isinstance(raw, dict):
        raise ValueError("the role policy is not a JSON object")
    statements = raw.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    return {**raw, "Version": raw.get("Version", "2012-10-17"), "Statement": list(statements)}


def bucket_of(expires_at: int) -> int:
    return int(math.ceil(expires_at / BUCKET_SECONDS) * BUCKET_SECONDS)


def _ours(statement: Any) -> int | None:
    sid = statement.get("Sid") if isinstance(statement, dict) else None
    match = _SID.fullmatch(sid) if isinstance(sid, str) else None
    return int(match.group(1)) if match else None


def _identities(statement: dict[str, Any]) -> list[str]:
    values = (statement.get("Condition") or {}).get("StringEquals", {}).get(CONDITION_KEY) or []
    return [values] if isinstance(values, str) else list(values)


def denied(document: dict[str, Any]) -> set[str]:
    """Every source identity the document's broker statements deny."""
    return {i for s in document["Statement"] if _ours(s) is not None for i in _identities(s)}


def with_denied(document: dict[str, Any], credential_id: str, *, expires_at: int,
                now: float) -> tuple[dict[str, Any], int]:
    """The document with ``credential_id`` denied until ``expires_at`` and the broker's
    statements whose sessions have all ended dropped; also how many entries were pruned.
    Raises :class:`DenyListFull` past IAM's size limit."""
    bucket = bucket_of(expires_at)
    kept: list[Any] = []
    pruned = 0
    placed = False
    for statement in document["Statement"]:
        until = _ours(statement)
        if until is None:
            kept.append(statement)
            continue
        identities = _identities(statement)
        if until + EXPIRY_SLACK < now:
            pruned += len(identities)
            continue
        if until == bucket:
            placed = True
            if credential_id not in identities:
                identities = [*identities, credential_id]
            statement = deny_statement(until, identities)
        kept.append(statement)
    if not placed:
        kept.append(deny_statement(bucket, [credential_id]))
    kept.sort(key=lambda s: (_ours(s) is not None, _ours(s) or 0))
    result = {**document, "Statement": kept}
    size = len(compact_json(result))
    if size > MAX_INLINE_POLICY:
        raise DenyListFull(f"the deny policy would be {size} characters; IAM allows "
                           f"{MAX_INLINE_POLICY} for a role's inline policies")
    return result, pruned


def deny_statement(until: int, identities: list[str]) -> dict[str, Any]:
    return {"Sid": f"{SID_PREFIX}{until}", "Effect": "Deny", "Action": "*", "Resource": "*",
            "Condition": {"StringEquals": {CONDITION_KEY: sorted(set(identities))}}}
