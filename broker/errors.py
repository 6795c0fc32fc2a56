"""Domain errors: what went wrong, in the broker's own words — no HTTP, no OAuth classes.

Domain code (attestation, policy, exchange, targets, keys, ledger, people, lifecycle) raises
these. The boundaries translate them once: :mod:`broker.http.errors` into RFC 6749 / 8693 JSON
errors, and (later) the gateway into PostgreSQL ``ErrorResponse`` messages.

Every error carries:

* ``description`` — the short, generic reason a client may see (printable ASCII only);
* ``detail`` — the longer reason for the server log and the ledger;
* ``reason`` — a stable, non-secret reason code (``replayed``, ``expired``,
  ``no_matching_policy``, …) when one is known;
* ``extra`` — fields the answer carries besides the error (``approval_id``, ``interval``…).

None of them may contain a secret: callers pass descriptions, never raw input.
"""
from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]')


def client_safe(text: str | None, limit: int = 300) -> str | None:
    """RFC 6749 restricts error_description to printable ASCII without ``"`` and ``\\``."""
    if text is None:
        return None
    return _UNSAFE.sub("?", text)[:limit]


class BrokerError(Exception):
    """Base of every refusal. ``detail`` is for the log and the ledger only.

    ``error`` is the refusal's code in the token-exchange vocabulary (RFC 6749 §5.2, RFC 8693
    §2.2.2, RFC 8628 §3.5): the ledger records it with every ``deny`` and the HTTP boundary
    answers with it. How it travels (HTTP status, headers, a PostgreSQL SQLSTATE) is the
    boundary's business, not the domain's.
    """

    error = "server_error"

    #: the reason code when the raiser gives none
    default_reason: str | None = None
    #: the description when the raiser gives none
    default_description: str = "request refused"

    def __init__(self, description: str | None = None, *, detail: str | None = None,
                 reason: str | None = None, extra: dict[str, Any] | None = None) -> None:
        self.description = client_safe(description or self.default_description) or ""
        self.detail = detail or description or self.default_description
        self.reason = reason or self.default_reason
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(self.detail)

    def __str__(self) -> str:  # what logs show
        return f"{self.error}: {self.detail}"


# -- the request itself ----------------------------------------------------------------------

class RequestMalformed(BrokerError):
    """A missing, repeated or malformed parameter, or a body the endpoint does not take."""
    error = "invalid_request"
    default_reason = "malformed_request"


class GrantTypeUnsupported(BrokerError):
    """A ``grant_type`` the endpoint does not implement."""
    error = "unsupported_grant_type"
    default_reason = "unsupported_grant_type"


class TokenTypeUnsupported(BrokerError):
    """A token type (``token_type_hint``, ``requested_token_type``) the broker does not handle."""
    error = "unsupported_token_type"
    default_reason = "unsupported_token_type"


# -- the subject (attestation, parent credential, delegation, person) ------------------------

class GrantRefused(BrokerError):
    """The presented subject (an attestation, a parent credential, a delegation) is not
    acceptable: bad signature, expired, replayed, revoked, not ours, …"""
    error = "invalid_grant"
    default_reason = "subject_refused"


# -- the decision ----------------------------------------------------------------------------

class TargetRefused(BrokerError):
    """The requested target is unknown or not usable for this subject."""
    error = "invalid_target"
    default_reason = "unknown_target"
    default_description = "unknown target"


class ScopeRefused(BrokerError):
    """The requested scopes exceed what the policy (or parent, or delegation) grants."""
    error = "invalid_scope"
    default_reason = "scope_not_allowed"
    default_description = "requested scope is not allowed"


class PolicyDenied(BrokerError):
    """No policy allows this subject this credential (default deny)."""
    error = "unauthorized_client"
    default_reason = "no_matching_policy"
    default_description = "no policy allows this exchange"


# -- people ------------------------------------------------------------------------------------

class ApprovalPending(BrokerError):
    """A person has not decided yet; poll again after ``extra["interval"]`` seconds."""
    error = "authorization_pending"
    default_reason = "approval_pending"


class ApprovalSlowDown(BrokerError):
    """Polled sooner than the interval allows."""
    error = "slow_down"
    default_reason = "polled_too_fast"


class ApprovalExpired(BrokerError):
    """The approval request expired before it was approved, or was not collected in time."""
    error = "expired_token"
    default_reason = "approval_expired"


class ApprovalDenied(BrokerError):
    """A person denied the request. Final."""
    error = "access_denied"
    default_reason = "approval_denied"


class PersonTokenInvalid(BrokerError):
    """A person's bearer ID token is missing, malformed, expired, forged or not from the
    configured human IdP."""
    error = "invalid_token"
    default_reason = "person_token_invalid"


# -- callers of the administrative endpoints --------------------------------------------------

class ClientUnauthenticated(BrokerError):
    """Client authentication failed (unknown client, wrong secret, none presented)."""
    error = "invalid_client"
    default_reason = "client_authentication_failed"


class PermissionDenied(BrokerError):
    """An authenticated caller lacks the permission (``may:``) for this action."""
    error = "access_denied"
    default_reason = "permission_denied"


class NotFound(BrokerError):
    """The requested record does not exist."""
    error = "not_found"
    default_reason = "not_found"


class RateLimited(BrokerError):
    """Too many requests from this caller; retry after ``retry_after`` seconds."""
    error = "slow_down"
    default_reason = "rate_limited"

    def __init__(self, description: str | None = None, *, retry_after: int = 1,
                 detail: str | None = None) -> None:
        super().__init__(description, detail=detail)
        self.retry_after = max(1, int(retry_after))


# -- dependencies --------------------------------------------------------------------------------

class BackendUnavailable(BrokerError):
    """A dependency (ledger, replay store, attestation keys, a credential backend, the signing
    key custodian) is down or too slow: the broker fails closed. Safe to retry later."""
    error = "temporarily_unavailable"
    default_reason = "backend_unavailable"
    default_description = "a dependency is unavailable; nothing was issued"


class LedgerUnavailable(BackendUnavailable):
    """The ledger database could not be read or written. The text is generic on purpose (never
    a DSN or a password); the driver's exception is chained as ``__cause__`` for the log."""
    default_reason = "ledger_unavailable"
    default_description = "the ledger is unavailable"

    def __init__(self, detail: str | None = None, *, description: str | None = None) -> None:
        super().__init__(description, detail=detail or "ledger unavailable")

    def __str__(self) -> str:
        return self.detail


class SigningUnavailable(BackendUnavailable):
    """The broker's own key custodian (file keys, Vault Transit) could not sign."""
    default_reason = "signing_unavailable"
    default_description = "the signing key is unavailable; nothing was issued"


class BackendMisconfigured(BrokerError):
    """A target's backend refused the broker itself (permission denied, unknown role or
    path, a rejected login): the target is misconfigured and retrying will not help."""
    error = "invalid_target"
    default_reason = "target_misconfigured"
    default_description = "target is not usable"


class InternalError(BrokerError):
    """An unexpected condition (a bug); details only in the log."""
    error = "server_error"
    default_reason = "internal_error"
    default_description = "internal error"
