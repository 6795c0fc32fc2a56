"""Server-rendered pages for people: sign in through the human IdP, approve or deny requests,
grant and revoke delegations.

Sign-in is Authlib's Flask OpenID Connect client (authorization code + PKCE S256, nonce and
state in the session), registered as ``human_idp`` from the ``kind: human-idp`` document;
after Authlib has validated the ID token, the broker verifies it again with its own verifier
(:func:`broker.attestation.person.verify_id_token`: the configured ``alg`` allowlist, ``aud`` = the client
id) and keeps only the person's non-secret facts (email, sub, username, groups) in the session
— never a token. The session cookie (``nhb_session``) is signed with ``BROKER_SECRET_KEY``, or
with a key generated once into ``$BROKER_STATE_DIR/session.key``; it is HttpOnly,
``SameSite=Lax`` and ``Secure`` when the broker's own URL (``BROKER_ISSUER``) is https. A
sign-in lasts :data:`SIGN_IN_TTL` seconds. Every form that changes something carries a CSRF
token bound to the session, checked in constant time.

Same hardening as the auditor's pages: no JavaScript, every value autoescaped, a strict
Content-Security-Policy (``form-action 'self'``), ``no-store``.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request, session
from werkzeug.wrappers import Response as WerkzeugResponse

from broker import config as cfg
from broker import errors
from broker.attestation.person import HumanTokenRefused, Person, may_approve, verify_id_token
from broker.common.durations import parse_duration
from broker.http.api.common import broker_context
from broker.http.errors import status_of
from broker.http.web import CSP
from broker.keys.shared import shared_secret
from broker.people import approvals
from broker.people import delegations as delegation

log = logging.getLogger("broker.http.web.people")

bp = Blueprint("people", __name__, template_folder="templates")

SIGN_IN_TTL = 3600
OAUTH_NAME = "human_idp"
_CSRF = "csrf"


# -- setup ----------------------------------------------------------------------------------

def session_secret(config: Any, state_dir: str) -> bytes:
    """``BROKER_SECRET_KEY``, else a random key created once in the state directory (shared by
    every worker on the host; the first writer wins)."""
    return shared_secret({**config, "STATE_DIR": state_dir}, setting="SECRET_KEY",
                         filename="session.key")


def client_secret(idp: Any) -> str:
    """The human IdP client secret, from its env variable or file (never from a policy file).
    Errors name where it was looked for, never the value."""
    if idp.client_secret_env:
        value = os.environ.get(idp.client_secret_env, "")
        if not value:
            raise RuntimeError(f"human-idp {idp.name!r}: the environment variable "
                               f"{idp.client_secret_env} (client secret) is not set")
        return value
    try:
        with open(idp.client_secret_file, encoding="utf-8") as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise RuntimeError(f"human-idp {idp.name!r}: cannot read client_secret_file "
                           f"{idp.client_secret_file} ({type(exc).__name__})") from None
    if not value:
        raise RuntimeError(f"human-idp {idp.name!r}: client_secret_file is empty")
    return value


def init_people(app: Flask) -> None:
    """Session settings, the OIDC client (when a human-idp is configured), the blueprint."""

    ctx = app.extensions["broker"]
    app.secret_key = session_secret(app.config, cfg.state_dir(app.config))
    app.config.update(SESSION_COOKIE_NAME="nhb_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=ctx.issuer.startswith("https://"))
    idp = ctx.policy_set.human_idp
    if idp is not None:
        from authlib.integrations.flask_client import OAuth

        try:
            secret = client_secret(idp)
        except RuntimeError:
            ctx.close()                 # nothing keeps running: the app is not built
            raise
        oauth = OAuth(app)
        oauth.register(
            OAUTH_NAME, client_id=idp.client_id, client_secret=secret,
            server_metadata_url=idp.issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": " ".join(idp.scopes), "code_challenge_method": "S256",
                           "token_endpoint_auth_method": "client_secret_basic",
                           "default_timeout": 10})
        app.extensions["people_oauth"] = oauth
    app.register_blueprint(bp)


# -- plumbing ---------------------------------------------------------------------------------

@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(errors.BrokerError)
def _error(error: errors.BrokerError) -> tuple[str, int, dict[str, str]]:
    status = status_of(error)
    body = render_template("people/error.html", http_status=status, error=error.error,
                           description=error.description or "", person=current_person())
    return body, status, {}


def current_person() -> Person | None:
    data = session.get("person")
    until = session.get("person_until", 0)
    if not isinstance(data, dict) or not isinstance(until, (int, float)) or until <= time.time():
        return None
    try:
        return Person.from_record(data)
    except (KeyError, TypeError):
        return None


def csrf_token() -> str:
    token = session.get(_CSRF)
    if not isinstance(token, str):
        token = session[_CSRF] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> None:
    expected = session.get(_CSRF)
    presented = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise errors.PermissionDenied("the form expired or did not come from this site; reload the page",
                                  detail="csrf token mismatch")


def _local_path(value: str | None, default: str = "/approvals/") -> str:
    """Only a path on this site (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(ord(c) < 0x20 for c in value):
        return default
    return value


def _signed_in() -> Person | WerkzeugResponse:
    person = current_person()
    if person is None:
        target = _local_path(request.full_path.rstrip("?") if request.method == "GET" else None)
        return redirect(f"/login?next={_quote(target)}")
    return person


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="/")


def _page(template: str, **context: Any) -> str:
    return render_template(template, person=current_person(), csrf_token=csrf_token(), **context)


def _idp_or_404() -> Any:
    ctx = broker_context()
    if ctx.policy_set.human_idp is None or "people_oauth" not in current_app.extensions:
        raise errors.NotFound("sign-in is not configured (no human-idp)")
    return ctx.policy_set.human_idp


# -- sign in / out ----------------------------------------------------------------------------

@bp.get("/login")
def login() -> WerkzeugResponse:
    _idp_or_404()
    session["login_next"] = _local_path(request.args.get("next"))
    client = current_app.extensions["people_oauth"].create_client(OAUTH_NAME)
    redirect_uri = f"{broker_context().issuer}/login/callback"
    try:
        redirect: WerkzeugResponse = client.authorize_redirect(redirect_uri)
        return redirect
    except Exception as exc:  # noqa: BLE001 - the IdP's discovery document is unreachable
        log.warning("sign-in could not start: %s", type(exc).__name__)
        raise errors.BackendUnavailable("the sign-in provider is unavailable") from None


@bp.get("/login/callback")
def login_callback() -> WerkzeugResponse:
    idp = _idp_or_404()
    client = current_app.extensions["people_oauth"].create_client(OAUTH_NAME)
    try:
        token = client.authorize_access_token()
    except Exception as exc:  # noqa: BLE001 - Authlib: state/nonce/ID-token/endpoint failures
        log.info("sign-in failed: %s", type(exc).__name__)
        raise errors.PermissionDenied("sign-in failed; try again", detail=f"sign-in failed: "
                                                                      f"{type(exc).__name__}") from None
    id_token = token.get("id_token") if isinstance(token, dict) else None
    if not id_token or not token.get("userinfo"):
        raise errors.PermissionDenied("sign-in failed: the provider sent no ID token")
    try:
        person, _ = verify_id_token(id_token, idp=idp, jwks=broker_context().jwks,
                                    audience=idp.client_id)
    except HumanTokenRefused as exc:
        log.info("sign-in refused: %s", exc.detail)
        raise errors.PermissionDenied("sign-in failed: the ID token is not acceptable") from None
    next_path = _local_path(session.get("login_next"))
    session.clear()                     # a new session for the signed-in person (no fixation)
    session["person"] = person.record()
    session["person_until"] = int(time.time()) + SIGN_IN_TTL
    csrf_token()
    log.info("signed in %s", person.email)
    return redirect(next_path)


@bp.post("/logout")
def logout() -> WerkzeugResponse:
    _check_csrf()
    session.clear()
    return redirect("/approvals/")


# -- approvals ----------------------------------------------------------------------------

@bp.get("/approvals/")
def approval_list() -> Any:
    person = _signed_in()
    if not isinstance(person, Person):
        return person
    ctx = broker_context()
    now = time.time()
    rules = {p.name: p.approval for p in ctx.policy_set.policies if p.approval is not None}
    records = ctx.people.list_approvals(status="pending", now=int(now),
                      pickup_window=approvals.PICKUP_WINDOW, limit=200)
    mine = [approvals.approval_json(ctx, r, now=now, person=person) for r in records
            if rules.get(r.policy_name) is not None and may_approve(rules[r.policy_name], person)]
    return _page("people/approvals.html", approvals=mine)


@bp.get("/approvals/<approval_id>")
def approval_page(approval_id: str) -> Any:
    person = _signed_in()
    if not isinstance(person, Person):
        return person
    ctx = broker_context()
    record = ctx.people.get_approval(approval_id) if approvals.is_approval_id(approval_id) else None
    if record is None:
        raise errors.NotFound("no such approval request")
    return _page("people/approval.html", a=approvals.approval_json(ctx, record, person=person),
                 message=request.args.get("done"))


def _decide(approval_id: str, *, approve: bool) -> Any:
    person = _signed_in()
    if not isinstance(person, Person):
        return person
    _check_csrf()
    approvals.decide(broker_context(), approval_id, person, approve=approve,
                     reason=request.form.get("reason"), via="web")
    return redirect(f"/approvals/{approval_id}?done={'approved' if approve else 'denied'}", code=303)


@bp.post("/approvals/<approval_id>/approve")
def approval_approve(approval_id: str) -> Any:
    return _decide(approval_id, approve=True)


@bp.post("/approvals/<approval_id>/deny")
def approval_deny(approval_id: str) -> Any:
    return _decide(approval_id, approve=False)


# -- delegations --------------------------------------------------------------------------

def _delegations_page(person: Person, **context: Any) -> str:
    ctx = broker_context()
    records = ctx.people.list_delegations(granted_by=person.email, limit=200)
    idp = ctx.policy_set.human_idp
    targets = sorted({t for p in ctx.policy_set.policies if idp is not None and p.issuer == idp.name
                      for t in p.targets})
    return _page("people/delegations.html", delegations=[delegation.delegation_json(r) for r in records],
                 targets=targets, **context)


@bp.get("/delegations/")
def delegation_list() -> Any:
    person = _signed_in()
    if not isinstance(person, Person):
        return person
    return _delegations_page(person)


@bp.post("/delegations/")
def delegation_create() -> Any:
    person = _signed_in()
    if not isinstance(person, Person):
        return person
    _check_csrf()
    form = request.form
    try:
        ttl = parse_duration(form.get("ttl", ""))
    except ValueError:
        raise errors.RequestMalformed("the lifetime must be a duration such as 30m, 2h or 1d") from None
    record, token = delegation.grant_delegation(
        broker_context(), person, agent=form.get("agent", ""), targets=form.getlist("target"),
        scopes=form.get("scope", "").split(), ttl=ttl, via="web")
    return _delegations_page(person, new=delegation.delegation_json(record), new_token=token)


@bp.post("/delegations/<delegation_id>/revoke")
def delegation_revoke(delegation_id: str) -> Any:
    person = _signed_in()
    if not isinstance(person, Person):
        return person
    _check_csrf()
    ctx = broker_context()
    record = ctx.people.get_delegation(delegation_id) if delegation.is_delegation_id(delegation_id) else None
    if record is None:
        raise errors.NotFound("no such delegation")
    if record.granted_by != person.email:
        raise errors.PermissionDenied("only the person who granted a delegation may revoke it")
    delegation.revoke_delegation(ctx, record, by={"person": person.email})
    return redirect("/delegations/", code=303)


