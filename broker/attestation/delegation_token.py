"""Verifying a delegation token: the broker-issued token a person's grant to an agent travels as
(RFC 8693 ``subject_token`` beside the agent's ``actor_token``). Granting and revoking are
:mod:`broker.people.delegations`."""
from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

from broker import errors
from broker.keys import TokenNotOurs
from broker.people.delegations import DELEGATION_TYP, TOKEN_USE, delegation_audience, is_delegation_id
from broker.people.store import DelegationRecord

if TYPE_CHECKING:
    from broker.app import BrokerContext


def is_delegation_token(unverified_token: str) -> bool:
    """Whether the token's (unverified) header says it is a delegation token: routing only."""
    if not isinstance(unverified_token, str) or unverified_token.count(".") != 2:
        return False
    segment = unverified_token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and header.get("typ") == DELEGATION_TYP




# -- granting -----------------------------------------------------------------------------------


class DelegationRefused(errors.GrantRefused):
    """The subject token is not a usable delegation. ``delegation_id`` names the grant when
    the token verified (for the deny event)."""

    def __init__(self, description: str, *, detail: str, delegation_id: str | None = None) -> None:
        super().__init__(description, detail=detail)
        self.delegation_id = delegation_id


def verify_delegation_token(ctx: BrokerContext, unverified_token: str, *,
                            now: float) -> DelegationRecord:
    """The live grant a delegation token stands for; raise :class:`DelegationRefused`."""
    try:
        claims = ctx.signer.verify(unverified_token, typ=DELEGATION_TYP)
    except TokenNotOurs as exc:
        raise DelegationRefused("the delegation token is not valid",
                                detail=f"delegation token does not verify ({exc})") from None
    delegation_id = claims.get("jti")
    if not is_delegation_token(unverified_token) or claims.get("token_use") != TOKEN_USE \
            or claims.get("aud") != delegation_audience(ctx) or not is_delegation_id(str(delegation_id)):
        raise DelegationRefused("the subject token is not a delegation token",
                                detail="broker token without the delegation typ/token_use/aud")
    record = ctx.people.get_delegation(str(delegation_id))
    if record is None or record.granted_by != claims.get("sub"):
        raise DelegationRefused("the delegation token is not valid",
                                detail="delegation not in the ledger")
    state = record.status(now)
    if state != "active":
        raise DelegationRefused(f"the delegation is {state}", detail=f"delegation {state}",
                                delegation_id=record.delegation_id)
    return record
