"""The login seam: who may connect through the gateway, and as whom it logs in upstream.

The broker implements :class:`Authenticator` (verify the access token presented as the password:
signature, expiry, liveness, target, user name) and returns :class:`Authorized`; the gateway never
judges a token itself. A refusal is :class:`LoginRefused`, which the session turns into a
``FATAL`` ErrorResponse with the given SQLSTATE and short message (never the secret).

:func:`minted_role_password` is the one derivation the broker (when it creates the role
``nhb_<credential id>``) and the gateway (when it logs in as it) must agree on.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

INVALID_AUTHORIZATION = "28000"       # invalid_authorization_specification
INVALID_PASSWORD = "28P01"            # invalid_password


class LoginRefused(Exception):
    """A login the gateway must refuse. ``message`` goes to the client verbatim: keep it short and
    free of secrets (no token, no password, no claim values that came from the token)."""

    def __init__(self, sqlstate: str = INVALID_AUTHORIZATION, message: str = "login refused", *,
                 credential_id: str | None = None, reason: str | None = None) -> None:
        if sqlstate not in (INVALID_AUTHORIZATION, INVALID_PASSWORD):
            raise ValueError("a refused login is SQLSTATE 28000 or 28P01")
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        #: the credential the token named, when it verified (the refusal is recorded against it)
        self.credential_id = credential_id
        #: the longer reason for the record (never sent to the client)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Authorized:
    """A login the broker accepted.

    ``upstream_user``/``upstream_password`` are what the gateway presents to the database: the
    minted role and :func:`minted_role_password` in ``minted-role`` mode, the shared service
    login in ``service-role`` mode. ``record`` (principal, run, authorizer, …) is copied into the
    gateway's ``connect`` record; it must not contain secrets.
    """
    credential_id: str
    upstream_user: str
    upstream_password: str = field(repr=False)
    upstream_dbname: str
    expires_at: float                                  # epoch seconds; the session ends then
    record: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Authenticator(Protocol):
    """Decides a login. May be ``async def authenticate`` (awaited on the event loop) or a plain
    function (run in the default executor, so it may block on I/O)."""

    def authenticate(self, username: str, password: str, database: str,
                     client_addr: str) -> Authorized | Awaitable[Authorized]:
        """Return :class:`Authorized` or raise :class:`LoginRefused`."""
        ...


def minted_role_password(secret: bytes, credential_id: str) -> str:
    """Password of the one-off role ``nhb_<credential_id>``: base64url(HMAC-SHA256(secret, id)),
    without padding (43 characters, ASCII, so SCRAM's SASLprep leaves it unchanged).

    The broker sets it when it creates the role; the gateway recomputes it at login. The workload
    only ever holds its access token, never this password.
    """
    if len(secret) < 32:
        raise ValueError("the gateway/broker shared secret must be at least 32 bytes")
    digest = hmac.new(secret, b"nhb-gateway-role:" + credential_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
