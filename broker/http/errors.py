"""The HTTP boundary's one error mapping: domain errors → RFC 6749 §5.2 JSON (RFC 8693 §2.2.2,
RFC 7009, RFC 8628 codes), with the HTTP status and headers each kind travels with. Never a
stack trace: anything unexpected is ``500 server_error`` with the detail only in the log.

The code (``error``) comes from the domain error itself — it is what the ledger records for a
refusal; the status, ``WWW-Authenticate`` and ``Retry-After`` live only here. The body is
rendered by Authlib's :class:`~authlib.oauth2.rfc6749.errors.OAuth2Error`.
"""
from __future__ import annotations

import logging

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from broker import errors

log = logging.getLogger("broker.http")

#: HTTP status of each domain error kind (the most specific class wins); everything else 400.
STATUS: dict[type[errors.BrokerError], int] = {
    errors.ClientUnauthenticated: 401,
    errors.PersonTokenInvalid: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.RateLimited: 429,
    errors.BackendUnavailable: 503,
    errors.InternalError: 500,
}

#: ``Retry-After`` seconds of a ``503 temporarily_unavailable`` (the client backs off from there).
BACKEND_RETRY_AFTER = 1

_HTTP_ERRORS = {
    404: ("not_found", "no such endpoint"),
    405: ("invalid_request", "method not allowed"),
    413: ("invalid_request", "request body too large"),
    415: ("invalid_request", "unsupported media type"),
}


def status_of(error: errors.BrokerError) -> int:
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 400


def headers_of(error: errors.BrokerError) -> dict[str, str]:
    """Headers a refusal travels with (RFC 7235 challenges, RFC 6585 ``Retry-After``)."""
    if isinstance(error, errors.ClientUnauthenticated):
        return {"WWW-Authenticate": 'Basic realm="nhi-broker"'}
    if isinstance(error, errors.PersonTokenInvalid):
        return {"WWW-Authenticate": 'Bearer realm="nhi-broker", error="invalid_token"'}
    if isinstance(error, errors.RateLimited):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, errors.BackendUnavailable):
        # a dependency is down and nothing was issued: safe to retry (docs/operations.md)
        return {"Retry-After": str(BACKEND_RETRY_AFTER)}
    return {}


def body_of(error: errors.BrokerError) -> dict[str, object]:
    """``{"error", "error_description", **extra}`` as Authlib renders an OAuth error."""
    oauth = OAuth2Error(description=error.description or None, status_code=status_of(error))
    oauth.error = error.error
    body: dict[str, object] = dict(oauth.get_body())
    body.update(error.extra)
    if isinstance(error, errors.RateLimited) and error.reason is not None:
        body.setdefault("reason", error.reason)    # refused before any attempt: no event_id
    return body


def render(error: errors.BrokerError) -> Response:
    response = jsonify(body_of(error))
    response.status_code = status_of(error)
    response.headers["Cache-Control"] = "no-store"
    for name, value in headers_of(error).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(errors.BrokerError)
    def _broker_error(error: errors.BrokerError) -> Response:
        if status_of(error) >= 500:
            log.warning("%s", error)
        return render(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        name, description = _HTTP_ERRORS.get(code, ("invalid_request", "bad request"))
        response = jsonify({"error": name, "error_description": description})
        response.status_code = code
        response.headers["Cache-Control"] = "no-store"
        valid_methods = getattr(error, "valid_methods", None)      # werkzeug's MethodNotAllowed
        if code == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error")
        return render(errors.InternalError("internal error"))
