"""Request helpers shared by the blueprints: strict form parameters and client authentication."""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, TYPE_CHECKING
from urllib.parse import unquote

from flask import current_app, request

from broker import errors
from broker.policy.model import Client

if TYPE_CHECKING:
    from broker.app import BrokerContext


def broker_context() -> BrokerContext:
    return current_app.extensions["broker"]


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
    return values[0]


_DUMMY_DIGEST = hashlib.sha256(b"nhi-broker: no such client").hexdigest()


def authenticate_client(*, permission: str) -> Client:
    """HTTP Basic client authentication (RFC 6749 §2.3.1) against ``kind: client`` documents.

    Unauthenticated → 401 ``invalid_client``; authenticated without ``permission`` → 403.
    Secrets are compared as SHA-256 digests in constant time; nothing about the presented
    secret is logged.
    """
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
    client_id, secret = unquote(raw_id), unquote(raw_secret)
    client = broker_context().policy_set.clients.get(client_id)
    presented = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    expected = client.secret_sha256 if client else _DUMMY_DIGEST
    if not hmac.compare_digest(presented, expected) or client is None:
        raise _invalid_client("client authentication failed")
    if permission not in client.may:
        raise errors.PermissionDenied(f"client may not {permission}",
                                  detail=f"client {client.name} lacks permission {permission}")
    return client


def _invalid_client(description: str) -> errors.ClientUnauthenticated:
    err = errors.ClientUnauthenticated(description)
    return err
