"""Request helpers shared by the blueprints: strict form parameters and client authentication."""
from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from flask import current_app, request

from broker import config as cfg
from broker import errors
from broker.common.untrusted import clip, install_log_sanitizer
from broker.http.ratelimit import FailureLimiter, open_failure_limiter
from broker.policy.model import Client

if TYPE_CHECKING:
    from broker.app import BrokerContext


install_log_sanitizer()      # client values in any broker log line are escaped and capped


def broker_context() -> BrokerContext:
    ctx: BrokerContext = current_app.extensions["broker"]
    return ctx


def form_params() -> Any:
    """The form body of a POST; refuses other content types and parameters in the query string."""
    mimetype = request.mimetype
    if mimetype != "application/x-www-form-urlencoded":
        raise errors.RequestMalformed("the request body must be application/x-www-form-urlencoded")
    if request.args:
        raise errors.RequestMalformed("parameters must be sent in the request body, not the URL")
    return request.form


def single(params: Any, name: str, *, required: bool = True) -> str | None:
    """One value of a parameter: missing or repeated parameters are ``invalid_request``."""
    values = params.getlist(name)
    if len(values) > 1:
        raise errors.RequestMalformed(f"parameter {name} is repeated")
    if not values or values[0] == "":
        if required:
            raise errors.RequestMalformed(f"parameter {name} is required")
        return None
    value: str = values[0]
    return value


_DUMMY_DIGEST = hashlib.sha256(b"nhi-broker: no such client").hexdigest()


def client_address() -> str:
    """The caller's address as the broker sees it (``BROKER_PROXY_FIX_X_FOR`` decides)."""
    return clip(request.remote_addr or "unknown", 64)


def presented_client_name() -> str | None:
    """The client id an ``Authorization: Basic`` header names, NOT authenticated: only to say
    who a refused caller claimed to be (bounded; None when there is no readable one)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value or len(value) > 4096:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    raw_id, sep, _ = decoded.partition(":")
    return clip(unquote_plus(raw_id), MAX_CLIENT_NAME) if sep and raw_id else None


MAX_CLIENT_NAME = 64
_limiter_lock = threading.Lock()


def client_auth_limiter() -> FailureLimiter | None:
    """The app's :class:`~broker.http.ratelimit.FailureLimiter` (``BROKER_CLIENT_AUTH_FAILURE_LIMIT``,
    default 10 failures a minute per address), built on first use."""
    ctx = broker_context()
    if "client_auth_failures" not in ctx.extras:
        with _limiter_lock:
            if "client_auth_failures" not in ctx.extras:
                config = current_app.config
                ctx.extras["client_auth_failures"] = open_failure_limiter(
                    config.get("CLIENT_AUTH_FAILURE_LIMIT"), redis_url=cfg.redis_url(config),
                    state_dir=cfg.state_dir(config),
                    redis_timeout=cfg.number(config, "REDIS_TIMEOUT"))
    limiter: FailureLimiter | None = ctx.extras["client_auth_failures"]
    return limiter


def authenticate_client(*, permission: str) -> Client:
    """HTTP Basic client authentication (RFC 6749 §2.3.1) against ``kind: client`` documents.

    Unauthenticated → 401 ``invalid_client``; authenticated without ``permission`` → 403.
    Secrets are compared as SHA-256 digests in constant time; nothing about the presented
    secret is logged. Each refused authentication counts against the caller's address; over
    the limit, the address is refused ``429`` before its credentials are even looked at.
    """
    limiter = client_auth_limiter()
    address = client_address()
    if limiter is not None:
        limiter.check(address)
    try:
        client = _authenticate()
    except errors.ClientUnauthenticated:
        if limiter is not None:
            limiter.failed(address)
        raise
    if permission not in client.may:
        raise errors.PermissionDenied(f"client may not {permission}",
                                  detail=f"client {client.name} lacks permission {permission}")
    return client


def _authenticate() -> Client:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise _invalid_client("client authentication required")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise _invalid_client("malformed client credentials") from None
    raw_id, sep, raw_secret = decoded.partition(":")
    if not sep:
        raise _invalid_client("malformed client credentials")
    # RFC 6749 §2.3.1: client_id and secret are form-urlencoded (Appendix B) before base64,
    # so "+" is a space and "%2B" a plus sign.
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    client = broker_context().policy_set.clients.get(client_id)
    presented = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    expected = client.secret_sha256 if client else _DUMMY_DIGEST
    if not hmac.compare_digest(presented, expected) or client is None:
        raise _invalid_client("client authentication failed")
    return client


def _invalid_client(description: str) -> errors.ClientUnauthenticated:
    err = errors.ClientUnauthenticated(description)
    return err
