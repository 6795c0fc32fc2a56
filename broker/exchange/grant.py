"""What every authorize step returns: one :class:`Grant`, whichever subject allowed it."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.ledger.rows import Statement
from broker.policy import Target


@dataclass(frozen=True)
class Grant:
    """Everything the mint needs: who, for which run, by whose authority, for what."""
    principal: str
    run: dict[str, Any]
    attestation: dict[str, Any]       # the JWT's `attestation` claim: {"iss", "issuer", "sha256"}
    issuer_name: str                  # the attestation issuer's config name
    target: Target
    scopes: tuple[str, ...]
    ttl: int
    authorizer: dict[str, Any]
    policy_name: str
    parent_id: str | None = None
    act: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)   # extra mint-event details
    # Ledger statements that must hold / run with the mint (an approval consumed, a delegation
    # still live and linked), given the new credential id; and the refusal when the guard fails.
    guard_for: Callable[[str], Statement] | None = None
    extra_for: Callable[[str], Sequence[Statement]] | None = None
    guard_refusal: str = "the authorization is no longer valid"
