"""The one error handler: every refusal is RFC 6749 §5.2 JSON, never a stack trace."""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from broker import errors

log = logging.getLogger("broker.http.api")

_HTTP_ERRORS = {
    404: ("not_found", "no such endpoint"),
    405: ("invalid_request", "method not allowed"),
    413: ("invalid_request", "request body too large"),
    415: ("invalid_request", "unsupported media type"),
}


def render(error: errors.BrokerError) -> Response:
    response = jsonify(error.to_dict())
    response.status_code = error.status_code or 400
    response.headers["Cache-Control"] = "no-store"
    for name, value in getattr(error, "extra_headers", None) or []:
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(errors.BrokerError)
    def _broker_error(error: errors.BrokerError) -> Response:
        if error.status_code and error.status_code >= 500:
            log.warning("%s", error)
        return render(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        name, description = _HTTP_ERRORS.get(code, ("invalid_request", "bad request"))
        refusal = errors.BrokerError(description, status_code=code)
        refusal.error = name
        response = render(refusal)
        if code == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error")
        return render(errors.ServerError("internal error"))
