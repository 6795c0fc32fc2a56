"""The one refusal the attestation step raises: :class:`AttestationError` (``invalid_grant``).

A client sees only one of a few short, generic descriptions. ``detail`` names the precise reason
for the server log and the ledger. Neither ever contains the token or any part of it; values an
attacker controls (an ``alg`` name, an ``iss``) are truncated and reduced to printable ASCII.
"""
from __future__ import annotations

import re

from broker.errors import GrantRefused

# The only descriptions a client ever sees.
NOT_ACCEPTABLE = "subject_token is not acceptable"
EXPIRED = "subject_token has expired"
REPLAYED = "subject_token has already been used"
UNTRUSTED_ISSUER = "subject_token issuer is not trusted"

_NON_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(value: object, limit: int = 64) -> str:
    """A log-safe rendering of an untrusted value: printable ASCII, at most ``limit`` chars."""
    text = _NON_PRINTABLE.sub("?", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: The stable reason code (the refusal's ``reason``) of each client-visible description.
_REASONS = {EXPIRED: "expired", REPLAYED: "replayed", UNTRUSTED_ISSUER: "untrusted_issuer"}


def reason_code(description: str, detail: str) -> str:
    """``expired``, ``replayed``, ``untrusted_issuer``, ``audience_mismatch`` or, for every
    other refusal of the token itself, ``subject_refused``."""
    if description in _REASONS:
        return _REASONS[description]
    if detail == "audience mismatch" or detail.startswith("aud lists"):
        return "audience_mismatch"
    return "subject_refused"


class AttestationError(GrantRefused):
    """RFC 6749 §5.2 ``invalid_grant``: "The provided authorization grant [...] is invalid,
    expired, revoked, [...] or was issued to another client." Here: the subject token.

    ``unverified_issuer`` (the token's ``iss`` as presented, at most 200 printable chars, or
    None) and ``token_sha256`` (None only for a token refused for its size) let the caller
    record a deny event.
    """

    def __init__(self, description: str = NOT_ACCEPTABLE, *, detail: str,
                 unverified_issuer: str | None = None, token_sha256: str | None = None) -> None:
        super().__init__(description, detail=detail, reason=reason_code(description, detail))
        self.stamp(unverified_issuer=unverified_issuer, token_sha256=token_sha256)

    def stamp(self, *, unverified_issuer: object, token_sha256: str | None) -> None:
        """Record what the verifier knew about the token when it refused it."""
        self.unverified_issuer = (
            printable(unverified_issuer, 200) if isinstance(unverified_issuer, str) else None
        )
        self.token_sha256 = token_sha256
