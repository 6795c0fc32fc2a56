"""Server-rendered pages for auditors under ``/audit/``.

Same client authentication as the audit API (HTTP Basic against ``kind: client`` documents
that ``may: [audit]``; a browser prompts on the 401). No JavaScript: the lineage graph is SVG
drawn on the server. The pages show attacker-influenced strings (attestation claims become
principals and runs; workloads choose their SQL), so every value goes through Jinja's
autoescaping, no template marks anything ``|safe``, and a strict Content-Security-Policy
(no scripts at all, styles only from our own stylesheet) backs that up.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for

from broker import errors
from broker.audit import views
from broker.audit.params import check_text, decode_cursor, encode_cursor, parse_instant
from broker.common.ids import is_credential_id
from broker.http.api.common import authenticate_client, broker_context
from broker.http.errors import headers_of, status_of
from broker.http.web import graph as graph_layout
from broker.http.web.status import ledger_status
from broker.ledger.events import EVENT_TYPES, utc_timestamp

bp = Blueprint("web", __name__, url_prefix="/audit", template_folder="templates",
               static_folder="static", static_url_path="/static")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
       " frame-ancestors 'none'; base-uri 'none'")
PAGE = 50


@bp.before_request
def _authenticate() -> None:
    if request.endpoint == "web.static":
        return
    authenticate_client(permission="audit")


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "web.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(errors.BrokerError)
def _error(error: errors.BrokerError) -> tuple[str, int, dict[str, str]]:
    status, headers = status_of(error), headers_of(error)
    body = render_template("audit/error.html", http_status=status, error=error.error,
                           description=error.description or "")
    return body, status, headers


def _ledger(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except views.NotFound as exc:
        raise errors.NotFound(str(exc)) from None
    except ValueError as exc:
        raise errors.RequestMalformed(str(exc)) from None


def _page(template: str, **context: Any) -> str:
    ledger = broker_context().ledger
    return render_template(template, status=ledger_status(ledger), **context)


def _arg(name: str) -> str | None:
    value = request.args.get(name, "").strip()
    return value or None


# -- pages -----------------------------------------------------------------------------------

@bp.get("/")
def index() -> str:
    ledger = broker_context().ledger
    head, _ = _ledger(ledger.head)
    recent = _ledger(ledger.search_events, after_seq=max(0, head - 20), limit=20)
    return _page("audit/index.html", recent=list(reversed(recent)), head=head)


@bp.get("/search")
def search() -> Any:
    """One box for a credential id, a run id, a principal or statement text."""
    q = _arg("q")
    kind = _arg("kind") or "auto"
    if kind not in ("auto", "credential", "run", "principal", "statement"):
        raise errors.RequestMalformed("unknown search kind")
    if q is None:
        return redirect(url_for("web.index"))
    if len(q) > 1000:
        raise errors.RequestMalformed("search text too long")
    ledger = broker_context().ledger
    if kind in ("auto", "credential") and is_credential_id(q.lower()):
        if _ledger(ledger.get_credential, q.lower()) is not None:
            return redirect(url_for("web.credential", credential_id=q.lower()))
    if kind in ("auto", "run") and _ledger(ledger.search_events, run_id=q, limit=1):
        return redirect(url_for("web.run", run_id=q))
    if kind in ("auto", "principal") and _ledger(ledger.search_events, principal=q, limit=1):
        return redirect(url_for("web.principal", principal=q))
    if kind in ("credential", "run", "principal"):
        raise errors.NotFound(f"no such {kind}")
    after = _ledger(int, _arg("after") or "0")
    hits = _ledger(ledger.find_usage, statement=q, after_seq=after, limit=PAGE)
    next_url = (url_for("web.search", q=q, kind=kind, after=hits[-1].seq)
                if len(hits) == PAGE else None)
    return _page("audit/statements.html", q=q, hits=hits, next_url=next_url)


@bp.get("/credentials/<credential_id>")
def credential(credential_id: str) -> str:
    if not is_credential_id(credential_id):
        raise errors.RequestMalformed("malformed credential id")
    ledger = broker_context().ledger
    view = _ledger(views.lineage_view, ledger, credential_id, usage_limit=20)
    timeline = _ledger(ledger.events_for_credential, credential_id, limit=200)
    drawing = graph_layout.layout(
        view, credential_href=lambda cid: url_for("web.credential", credential_id=cid))
    return _page("audit/credential.html", view=view, c=view["credential"], graph=drawing,
                 timeline=timeline)


@bp.get("/runs/<path:run_id>")
def run(run_id: str) -> str:
    _ledger(check_text, run_id, "run id", max_len=256)
    view = _ledger(views.run_view, broker_context().ledger, run_id, usage_limit=0)
    return _page("audit/run.html", view=view)


@bp.get("/principals/<path:principal>")
def principal(principal: str) -> str:
    _ledger(check_text, principal, "principal")
    until = _ledger(parse_instant, _arg("until"), relative=True) if _arg("until") else utc_timestamp()
    since = _ledger(parse_instant, _arg("since") or "7d", relative=True)
    if since >= until:
        raise errors.RequestMalformed("since must be before until")
    view = _ledger(views.principal_view, broker_context().ledger, principal, since=since,
                   until=until, limit=200)
    return _page("audit/principal.html", view=view, since_arg=_arg("since") or "7d",
                 until_arg=_arg("until") or "")


@bp.get("/events")
def events() -> str:
    raw = {name: _arg(name) for name in ("type", "principal", "credential_id", "since", "until")}
    if raw["type"] is not None and raw["type"] not in EVENT_TYPES:
        raise errors.RequestMalformed("unknown event type")
    if raw["credential_id"] is not None and not is_credential_id(raw["credential_id"]):
        raise errors.RequestMalformed("malformed credential id")
    # The form accepts "24h"-style times; the cursor binds to what was typed.
    filters = dict(raw)
    for name in ("since", "until"):
        if raw[name] is not None:
            filters[name] = _ledger(parse_instant, raw[name], relative=True)
    after = 0
    if _arg("cursor"):
        after = _ledger(decode_cursor, _arg("cursor"), raw)
    body = _ledger(views.events_view, broker_context().ledger, filters=filters, after_seq=after,
                   limit=PAGE)
    next_url = None
    if body["next_cursor"]:
        given: dict[str, Any] = {k: v for k, v in raw.items() if v is not None}
        next_url = url_for("web.events", **given, cursor=encode_cursor(body["events"][-1]["seq"], raw))
    return _page("audit/events.html", events=body["events"], filters=raw, next_url=next_url,
                 types=sorted(EVENT_TYPES))


@bp.get("/ledger")
def ledger_page() -> str:
    """Recompute the chain now (the status pill on other pages shows the last result)."""
    ledger = broker_context().ledger
    return render_template("audit/ledger.html", status=ledger_status(ledger, force=True))


@bp.app_template_filter("compact_json")
def compact_json(value: Any, limit: int = 400) -> str:
    import json

    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[:limit - 1] + "…"


@bp.app_template_filter("short_id")
def short_id(value: Any) -> str:
    text = str(value or "")
    return text if len(text) <= 12 else f"{text[:6]}…{text[-4:]}"
