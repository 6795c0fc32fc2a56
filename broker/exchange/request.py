"""What an exchange is asked (a validated RFC 8693 request) and what it answers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN})
ACTOR_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN})
REQUESTED_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS_TOKEN})


@dataclass(frozen=True)
class ExchangeRequest:
    """A validated RFC 8693 request (parameters already checked by the HTTP layer)."""
    subject_token: str
    subject_token_type: str
    target: str                               # the `audience` parameter: a target name
    scopes: tuple[str, ...] | None = None     # None: not requested
    ttl: int | None = None                    # optional requested lifetime (seconds)
    approval_id: str | None = None            # a poll of an approval request
    actor_token: str | None = None            # RFC 8693 actor_token: the agent's attestation
    actor_token_type: str | None = None


@dataclass
class ExchangeResult:
    access_token: str
    credential_id: str
    expires_in: int
    expires_at: int
    scope: str
    issued_token_type: str = TOKEN_TYPE_JWT
    credential: dict[str, Any] | None = None  # secret-bearing kinds only; never logged
    parent_id: str | None = None              # children (fan-out) only

    def to_response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
            "credential_id": self.credential_id,
        }
        if self.parent_id is not None:
            body["parent_id"] = self.parent_id
        if self.credential is not None:
            body["credential"] = self.credential
        return body
