"""One class per OAuth error code the broker answers with (RFC 6749 §5.2, RFC 8693 §2.2.2,
RFC 7009, RFC 8628), rendered as ``{"error": ..., "error_description": ...}``.

Every class reuses Authlib's :class:`OAuth2Error`. ``error_description`` is the short, generic
reason a client sees; ``detail`` is the longer reason that goes to the server log and the
ledger. Neither may contain a secret: callers pass descriptions, never raw input.
"""
from __future__ import annotations

import re
from typing import Any

from authlib.oauth2.rfc6749 import errors as rfc6749

_UNSAFE = re.compile(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]')


def _safe(text: str | None, limit: int = 300) -> str | None:
    """RFC 6749 restricts error_description to printable ASCII without ``"`` and ``\\``."""
    if text is None:
        return None
    return _UNSAFE.sub("?", text)[:limit]


class BrokerError(rfc6749.OAuth2Error):
    """Base of every refusal. ``detail`` is for the log and the ledger only."""

    error = "server_error"
    status_code = 400

    def __init__(self, description: str | None = None, *, detail: str | None = None,
                 status_code: int | None = None, extra: dict[str, Any] | None = None) -> None:
        # Call the base directly: some Authlib subclasses (e.g. UnsupportedGrantTypeError) change
        # the constructor signature; we only reuse their names and codes.
        rfc6749.OAuth2Error.__init__(self, description=_safe(description), status_code=status_code)
        self.detail = detail or description or self.error
        self.extra = dict(extra or {})

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        body.update(self.extra)
        return body

    def __str__(self) -> str:  # what logs show
        return f"{self.error}: {self.detail}"


class InvalidRequest(BrokerError, rfc6749.InvalidRequestError):
    """RFC 6749 §5.2 ``invalid_request``: missing, repeated or malformed parameter."""
    error = "invalid_request"
    status_code = 400


class InvalidClient(BrokerError, rfc6749.InvalidClientError):
    """RFC 6749 §5.2 ``invalid_client``: client authentication failed (HTTP 401)."""
    error = "invalid_client"
    status_code = 401


class UnauthorizedClient(BrokerError, rfc6749.UnauthorizedClientError):
    """RFC 6749 §5.2 ``unauthorized_client``: no policy allows this workload this credential."""
    error = "unauthorized_client"
    status_code = 400


class UnsupportedGrantType(BrokerError, rfc6749.UnsupportedGrantTypeError):
    """RFC 6749 §5.2 ``unsupported_grant_type``."""
    error = "unsupported_grant_type"
    status_code = 400


class InvalidGrant(BrokerError, rfc6749.InvalidGrantError):
    """RFC 6749 §5.2 ``invalid_grant``: the subject token (attestation) is not acceptable."""
    error = "invalid_grant"
    status_code = 400


class InvalidScope(BrokerError, rfc6749.InvalidScopeError):
    """RFC 6749 §5.2 ``invalid_scope``: requested scope exceeds what the policy grants."""
    error = "invalid_scope"
    status_code = 400


class InvalidTarget(BrokerError):
    """RFC 8693 §2.2.2 ``invalid_target``: unknown or unusable audience/resource."""
    error = "invalid_target"
    status_code = 400


class UnsupportedTokenType(BrokerError, rfc6749.UnsupportedTokenTypeError):
    """RFC 7009 §2.2.1 ``unsupported_token_type``."""
    error = "unsupported_token_type"
    status_code = 400


class AccessDenied(BrokerError, rfc6749.AccessDeniedError):
    """RFC 6749 §4.1.2.1 ``access_denied``: an authenticated client lacks the permission."""
    error = "access_denied"
    status_code = 403


class NotFound(BrokerError):
    """The requested record does not exist (audit API)."""
    error = "not_found"
    status_code = 404


class TemporarilyUnavailable(BrokerError):
    """RFC 6749 §4.1.2.1 ``temporarily_unavailable``: a dependency (ledger, replay store,
    credential backend) is down; the broker fails closed."""
    error = "temporarily_unavailable"
    status_code = 503


class ServerError(BrokerError):
    """RFC 6749 §4.1.2.1 ``server_error``: an unexpected condition; details only in the log."""
    error = "server_error"
    status_code = 500


class AuthorizationPending(BrokerError):
    """RFC 8628 §3.5 ``authorization_pending``: a person has not decided yet; poll again after
    ``interval`` seconds (the answer carries ``approval_id``, ``approval_url``, ``interval``)."""
    error = "authorization_pending"
    status_code = 400


class SlowDown(BrokerError):
    """RFC 8628 §3.5 ``slow_down``: polled sooner than ``interval``; wait 5 seconds more."""
    error = "slow_down"
    status_code = 400


class ExpiredToken(BrokerError):
    """RFC 8628 §3.5 ``expired_token``: the approval request expired before it was approved
    (or was not collected in time after it); start a new request."""
    error = "expired_token"
    status_code = 400


class ApprovalDenied(BrokerError):
    """RFC 8628 §3.5 ``access_denied`` at the token endpoint (HTTP 400): a person denied the
    request. Final."""
    error = "access_denied"
    status_code = 400


class InvalidToken(BrokerError):
    """RFC 6750 §3.1 ``invalid_token``: the bearer (a person's ID token) is missing, malformed,
    expired, forged or not from the configured human IdP (HTTP 401)."""
    error = "invalid_token"
    status_code = 401
