"""The lineage API for clients that ``may: [audit]``: credentials' lineage, runs, principals
and paged event search ("who ran this statement" is ``GET /v1/usage``, broker/http/api/usage.py).
Thin: parse strictly, call :mod:`broker.audit.views`.

Every endpoint refuses unknown or repeated query parameters and malformed values with
``invalid_request`` (400) and unknown records with ``not_found`` (404); client authentication
comes first (401 ``invalid_client`` / 403 ``access_denied``).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any, TypeVar

from flask import Blueprint, request

from broker import errors
from broker.audit import views
from broker.audit.params import check_text, decode_cursor, parse_instant
from broker.common.ids import is_credential_id
from broker.http.api.common import authenticate_client, broker_context
from broker.ledger.events import EVENT_TYPES, utc_timestamp

bp = Blueprint("lineage", __name__, url_prefix="/v1")

NO_STORE = {"Cache-Control": "no-store"}
DEFAULT_WINDOW = 24 * 3600            # GET /v1/principals/…: the last day unless told


class Query:
    """The query string of one request, checked against the names the endpoint accepts."""

    def __init__(self, allowed: set[str]) -> None:
        for name in request.args:
            if name not in allowed:
                raise errors.RequestMalformed(f"unknown parameter {_printable(name)}")
            if len(request.args.getlist(name)) > 1:
                raise errors.RequestMalformed(f"parameter {name} is repeated")

    @staticmethod
    def text(name: str) -> str | None:
        value = request.args.get(name)
        return None if value is None or value == "" else value

    def integer(self, name: str, default: int, *, lo: int, hi: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        if not raw.isdigit() or len(raw) > 9:
            raise errors.RequestMalformed(f"parameter {name} must be an integer")
        value = int(raw)
        if not lo <= value <= hi:
            raise errors.RequestMalformed(f"parameter {name} must be between {lo} and {hi}")
        return value

    def instant(self, name: str) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        return _parsed(parse_instant, raw, name)

    @staticmethod
    def window(since: str | None, until: str | None) -> None:
        if since is not None and until is not None and since >= until:
            raise errors.RequestMalformed("since must be before until")

T = TypeVar("T")


def _printable(name: str) -> str:
    return name if name.isascii() and name.isprintable() and len(name) <= 40 else "(unprintable)"


def _parsed(parse: Callable[[str], T], raw: str, name: str) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise errors.RequestMalformed(f"parameter {name}: {exc}") from None


def _credential_id(value: str | None, name: str = "credential id") -> str:
    if value is None or not is_credential_id(value):
        raise errors.RequestMalformed(f"malformed {name}")
    return value


def _view(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return fn(broker_context().ledger, *args, **kwargs)
    except views.NotFound as exc:
        raise errors.NotFound(str(exc)) from None


_TREE_PARAMS = {"depth", "limit", "usage_limit"}


def _tree_args(query: Query) -> dict[str, int]:
    return {"max_depth": query.integer("depth", 16, lo=1, hi=32),
            "limit": query.integer("limit", 1000, lo=1, hi=10000),
            "usage_limit": query.integer("usage_limit", 10, lo=0, hi=100)}


@bp.get("/credentials/<credential_id>/lineage")
def lineage(credential_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    authenticate_client(permission="audit")
    query = Query(_TREE_PARAMS)
    _credential_id(credential_id)
    return _view(views.lineage_view, credential_id, **_tree_args(query)), 200, NO_STORE


@bp.get("/runs/<path:run_id>")
def run(run_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    authenticate_client(permission="audit")
    query = Query(_TREE_PARAMS)
    _parsed(lambda v: check_text(v, "run id", max_len=256), run_id, "run id")
    return _view(views.run_view, run_id, **_tree_args(query)), 200, NO_STORE


@bp.get("/principals/<path:principal>")
def principal(principal: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    authenticate_client(permission="audit")
    query = Query({"since", "until", "limit", "usage_limit"})
    _parsed(lambda v: check_text(v, "principal"), principal, "principal")
    until = query.instant("until")
    since = query.instant("since")
    if until is None:
        until = utc_timestamp()
    if since is None:
        since = utc_timestamp(max(0.0, _epoch(until) - DEFAULT_WINDOW))
    query.window(since, until)
    body = _view(views.principal_view, principal, since=since, until=until,
                 limit=query.integer("limit", 100, lo=1, hi=1000),
                 usage_limit=query.integer("usage_limit", 0, lo=0, hi=100))
    return body, 200, NO_STORE


_EVENT_FILTERS = ("type", "principal", "credential_id", "since", "until")


@bp.get("/events")
def events() -> tuple[dict[str, Any], int, dict[str, str]]:
    authenticate_client(permission="audit")
    query = Query({*_EVENT_FILTERS, "cursor", "limit"})
    filters = {name: query.text(name) for name in _EVENT_FILTERS}
    if filters["type"] is not None and filters["type"] not in EVENT_TYPES:
        raise errors.RequestMalformed("parameter type must be one of " + ", ".join(sorted(EVENT_TYPES)))
    if filters["credential_id"] is not None:
        _credential_id(filters["credential_id"], "credential_id")
    if filters["principal"] is not None:
        _parsed(lambda v: check_text(v, "principal"), filters["principal"], "principal")
    query.window(query.instant("since"), query.instant("until"))
    limit = query.integer("limit", 100, lo=1, hi=1000)
    cursor = query.text("cursor")
    after = 0 if cursor is None else _parsed(lambda c: decode_cursor(c, filters), cursor, "cursor")
    return _view(views.events_view, filters=filters, after_seq=after, limit=limit), 200, NO_STORE


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
