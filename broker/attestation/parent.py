"""Verifying a parent credential: a token this broker issued, presented as the ``subject_token``
of a new exchange (fan-out).

Recognising one: its unverified ``iss`` is the broker's own issuer (:func:`is_broker_token`,
routing only). Then it must verify with the broker's keys (expiry excepted, so an expired parent
is refused by name), name a credential the ledger knows, match that record, and be **live** by
the one liveness rule (:mod:`broker.lifecycle.liveness`): it and every ancestor neither revoked,
ended nor expired, and any delegation it was minted under still granted.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.common.ids import is_credential_id
from broker.keys import Signer, TokenNotOurs
from broker.ledger.events import CredentialRecord
from broker.lifecycle import liveness
from broker.policy.model import MAX_DERIVE_DEPTH

if TYPE_CHECKING:
    from broker.ledger import Ledger

MAX_TOKEN_BYTES = 16 * 1024


class ParentRefused(errors.GrantRefused):
    """The presented broker credential cannot be a parent. ``parent_id`` is what the deny event
    links to; ``parent_verified`` False when only the token's unverified ``jti`` named it."""

    def __init__(self, description: str, *, detail: str, parent_id: str | None,
                 parent_verified: bool, record: CredentialRecord | None = None) -> None:
        super().__init__(description, detail=detail)
        self.parent_id = parent_id
        self.parent_verified = parent_verified
        self.record = record


def unverified_payload(unverified_token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, NOT verified: only to route the request and to name what
    a refused token claimed. None when it is not a readable JWS payload."""
    if not isinstance(unverified_token, str) or len(unverified_token) > MAX_TOKEN_BYTES:
        return None
    parts = unverified_token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def is_broker_token(unverified_token: str, broker_issuer: str) -> bool:
    """True when the token claims to be one of ours (its unverified ``iss`` is our issuer)."""
    payload = unverified_payload(unverified_token)
    unverified_issuer = payload.get("iss") if payload else None
    return isinstance(unverified_issuer, str) and unverified_issuer.rstrip("/") == broker_issuer.rstrip("/")


@dataclass(frozen=True)
class Parent:
    """A verified, live parent credential and its lineage (the parent first, the root last)."""
    claims: dict[str, Any]
    lineage: tuple[CredentialRecord, ...]

    @property
    def record(self) -> CredentialRecord:
        return self.lineage[0]

    @property
    def root(self) -> CredentialRecord:
        return self.lineage[-1]

    @property
    def depth(self) -> int:
        return len(self.lineage) - 1


def verify_parent(unverified_token: str, *, signer: Signer, ledger: Ledger, now: float) -> Parent:
    """Verify a broker credential presented as a subject token; raise :class:`ParentRefused`.

    The signature and the registered claims are checked by the signer (expiry excepted, so an
    expired parent is refused by name); then the ledger decides: the credential must exist and
    it and each ancestor must be neither revoked, ended nor expired.
    """
    try:
        claims = signer.verify(unverified_token, verify_exp=False)
    except TokenNotOurs as exc:
        payload = unverified_payload(unverified_token) or {}
        unverified_jti = payload.get("jti")
        named = None
        if isinstance(unverified_jti, str) and is_credential_id(unverified_jti) \
                and ledger.get_credential(unverified_jti) is not None:
            named = unverified_jti
        raise ParentRefused("subject token is not a valid broker credential",
                            detail=f"parent token does not verify ({exc})",
                            parent_id=named, parent_verified=False) from None
    credential_id = str(claims.get("jti"))
    verdict = liveness.credential_liveness(ledger, credential_id, now=now,
                                           max_lineage=MAX_DERIVE_DEPTH + 1)
    record = verdict.record
    if record is None:
        raise ParentRefused("subject token is not a valid broker credential",
                            detail="parent credential is not in the ledger",
                            parent_id=None, parent_verified=True)
    if claims.get("sub") != record.principal or claims.get("target") != record.target:
        raise ParentRefused("subject token is not a valid broker credential",
                            detail="parent token does not match its ledger record",
                            parent_id=credential_id, parent_verified=True, record=record)
    if verdict.state == liveness.TOO_DEEP:
        raise ParentRefused("the parent credential's lineage is too deep",
                            detail=f"lineage longer than {MAX_DERIVE_DEPTH} levels",
                            parent_id=credential_id, parent_verified=True, record=record)
    if verdict.state is not None:
        whose = ("parent credential" if verdict.depth == 0
                 else f"ancestor credential {verdict.culprit}")
        raise ParentRefused(f"the parent credential is {verdict.state}" if verdict.depth == 0
                            else f"the parent credential's ancestor is {verdict.state}",
                            detail=f"{whose} {verdict.state}", parent_id=credential_id,
                            parent_verified=True, record=record)
    return Parent(claims=claims, lineage=verdict.lineage)
