"""`broker approvals list|show|approve|deny` and `broker delegations grant|list|revoke`: what a
person does on the broker's pages, from a terminal.

    broker approvals list [--status pending] --url https://broker.internal --id-token-file tok
    broker approvals approve apr_01j… [--reason "checked the migration"]
    broker approvals deny apr_01j… --reason "not during the freeze"
    broker delegations grant --agent 'github:acme/agents:…' --target reports-api --scope reports:read --ttl 2h
    broker delegations revoke dlg_01j…

The person authenticates with an ID token from the broker's human IdP (``kind: human-idp``):
``--id-token-file PATH`` or ``$BROKER_HUMAN_ID_TOKEN_FILE``, or the token itself in
``$BROKER_HUMAN_ID_TOKEN`` (never on the command line, where other users could read it). The
broker verifies it (its audience is the human-idp's ``audience``, else its client id). The
token is sent only to ``--url`` (``$BROKER_URL``), never printed.

Exit codes: 0 done, 1 refused (the broker's reason on stderr), 2 usage, 3 broker unreachable,
4 the ID token was not accepted.
"""
from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import click

from broker.cli.audit import clean
from broker.cli.common import console

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TOKEN = 1, 2, 3, 4


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        return None                    # the ID token is never re-sent elsewhere


class PeopleClient:
    """The people's API of one broker, as one person (standard library only)."""

    def __init__(self, url: str, id_token: str, *, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username:
            raise _Fail(EXIT_USAGE, "the broker URL must be http(s)://host[:port] without credentials")
        self.url = url.rstrip("/")
        self._token = id_token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    def call(self, method: str, path: str, form: dict[str, str] | None = None) -> dict[str, Any]:
        data = urllib.parse.urlencode(form).encode("ascii") if form is not None else None
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                   "User-Agent": "nhi-broker-cli"}
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            exc.close()
        except (urllib.error.URLError, OSError) as exc:
            raise _Fail(EXIT_UNREACHABLE, f"cannot reach {self.url}: "
                                          f"{getattr(exc, 'reason', type(exc).__name__)}") from None
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, ValueError):
            body = {}
        if 200 <= status < 300 and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        message = f"{error or 'HTTP ' + str(status)}" + (f": {description}" if description else "")
        raise _Fail(EXIT_TOKEN if status == 401 else EXIT_REFUSED, clean(message, 300))


def read_id_token(id_token_file: str | None) -> str:
    path = id_token_file or os.environ.get("BROKER_HUMAN_ID_TOKEN_FILE")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Fail(EXIT_USAGE, f"cannot read the ID token file {path}: "
                                    f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    else:
        token = os.environ.get("BROKER_HUMAN_ID_TOKEN", "").strip()
    if not token:
        raise _Fail(EXIT_USAGE, "no ID token: pass --id-token-file or set BROKER_HUMAN_ID_TOKEN(_FILE)")
    return token


def _client(url: str | None, id_token_file: str | None, timeout: float) -> PeopleClient:
    if not url:
        raise _Fail(EXIT_USAGE, "no broker URL: pass --url or set BROKER_URL")
    return PeopleClient(url, read_id_token(id_token_file), timeout=timeout)


def _run(fn: Any) -> None:
    try:
        fn()
    except _Fail as exc:
        click.echo(f"broker: error: {exc.message}", err=True)
        sys.exit(exc.code)


def _common(fn: Any) -> Any:
    fn = click.option("--timeout", type=float, default=30.0, show_default=True,
                      help="Seconds per HTTP request.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(fn)
    fn = click.option("--id-token-file", default=None, type=click.Path(dir_okay=False),
                      help="File holding your ID token (default $BROKER_HUMAN_ID_TOKEN_FILE, "
                           "or the token in $BROKER_HUMAN_ID_TOKEN).")(fn)
    fn = click.option("--url", envvar="BROKER_URL", default=None,
                      help="The broker's URL (default $BROKER_URL).")(fn)
    return fn


def _print_approval(a: dict[str, Any]) -> None:
    console.print(f"[bold]{clean(a['approval_id'])}[/bold]  {clean(a['status'])}")
    run = a.get("run") or {}
    for label, value in (
            ("principal", a.get("principal")),
            ("run", f"{run.get('id', '-')}" + (f" attempt {run['attempt']}" if run.get("attempt") else "")
             + (f"  {a['run_url']}" if a.get("run_url") else "")),
            ("commit", a.get("commit")), ("started by", run.get("actor")),
            ("target", a.get("target")), ("scope", a.get("scope") or "none"),
            ("ttl", a.get("ttl_text")),
            ("policy", f"{(a.get('policy') or {}).get('name')} {(a.get('policy') or {}).get('digest')}"),
            ("expires", a.get("expires_at")),
            ("approved by", ", ".join(v.get("email", "") for v in a.get("votes") or []) or None),
            ("decided by", a.get("decided_by")), ("reason", a.get("reason")),
            ("credential", a.get("credential_id"))):
        if value:
            console.print(f"  {label:<12} {clean(value, 200)}", markup=False, highlight=False)
    you = a.get("you") or {}
    if you and not you.get("may_approve") and you.get("why_not"):
        console.print(f"  {'you':<12} cannot approve: {clean(you['why_not'])}", markup=False)


@click.group("approvals")
def approvals() -> None:
    """Approve or deny requests that a policy lets only a person approve."""


@approvals.command("list")
@click.option("--status", default="pending", show_default=True,
              type=click.Choice(["pending", "approved", "denied", "consumed", "expired", "all"]))
@_common
def approvals_list(status: str, url: str | None, id_token_file: str | None, as_json: bool,
                   timeout: float) -> None:
    """Requests you are an approver of."""
    def go() -> None:
        body = _client(url, id_token_file, timeout).call(
            "GET", "/v1/approvals?" + urllib.parse.urlencode({"status": status}))
        if as_json:
            click.echo(json.dumps(body, indent=2))
            return
        rows = body.get("approvals", [])
        if not rows:
            click.echo(f"no {status} requests for you", err=True)
        for a in rows:                   # one line each: ids stay whole whatever the width
            run = a.get("run") or {}
            click.echo("  ".join(clean(v, 200) for v in (
                a["approval_id"], a["status"], a["target"], a.get("scope") or "none",
                f"run {run.get('id', '-')}", a["principal"], f"expires {a['expires_at']}")))
    _run(go)


@approvals.command("show")
@click.argument("approval_id")
@_common
def approvals_show(approval_id: str, url: str | None, id_token_file: str | None, as_json: bool,
                   timeout: float) -> None:
    """What a request asks for."""
    def go() -> None:
        body = _client(url, id_token_file, timeout).call(
            "GET", f"/v1/approvals/{urllib.parse.quote(approval_id, safe='')}")
        click.echo(json.dumps(body, indent=2)) if as_json else _print_approval(body)
    _run(go)


def _decide(action: str, approval_id: str, reason: str | None, url: str | None,
            id_token_file: str | None, as_json: bool, timeout: float) -> None:
    def go() -> None:
        form = {"reason": reason} if reason else {}
        body = _client(url, id_token_file, timeout).call(
            "POST", f"/v1/approvals/{urllib.parse.quote(approval_id, safe='')}/{action}", form)
        click.echo(json.dumps(body, indent=2)) if as_json else _print_approval(body)
    _run(go)


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--reason", default=None, help="Why (recorded in the ledger).")
@_common
def approvals_approve(approval_id: str, reason: str | None, url: str | None,
                      id_token_file: str | None, as_json: bool, timeout: float) -> None:
    """Approve a request."""
    _decide("approve", approval_id, reason, url, id_token_file, as_json, timeout)


@approvals.command("deny")
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (recorded in the ledger; required).")
@_common
def approvals_deny(approval_id: str, reason: str, url: str | None, id_token_file: str | None,
                   as_json: bool, timeout: float) -> None:
    """Deny a request (final)."""
    _decide("deny", approval_id, reason, url, id_token_file, as_json, timeout)


@click.group("delegations")
def delegations() -> None:
    """Let an agent act for you (RFC 8693 actor_token), and take it back."""


@delegations.command("grant")
@click.option("--agent", required=True, help="The agent's principal, exactly.")
@click.option("--target", "targets", multiple=True, required=True, help="A target; repeat for more.")
@click.option("--scope", "scopes", multiple=True, help="Scope(s); repeat or space-separate.")
@click.option("--ttl", required=True, help="How long (30m, 2h, 1d).")
@click.option("--token-out", type=click.Path(dir_okay=False), default=None,
              help="Write the delegation token to this file (mode 0600) instead of stdout.")
@_common
def delegations_grant(agent: str, targets: tuple[str, ...], scopes: tuple[str, ...], ttl: str,
                      token_out: str | None, url: str | None, id_token_file: str | None,
                      as_json: bool, timeout: float) -> None:
    """Grant a delegation; prints the delegation token for the agent."""
    def go() -> None:
        form = {"agent": agent, "target": " ".join(t for part in targets for t in part.split()),
                "scope": " ".join(s for part in scopes for s in part.split()), "ttl": ttl}
        body = _client(url, id_token_file, timeout).call("POST", "/v1/delegations", form)
        token = body.pop("delegation_token", "")
        if token_out:
            fd = os.open(token_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(token + "\n")
        if as_json:
            click.echo(json.dumps(body if token_out else {**body, "delegation_token": token}, indent=2))
            return
        click.echo(f"delegation {body['delegation_id']} for {clean(body['agent'])} on "
                   f"{', '.join(body['targets'])} until {body['expires_at']}", err=True)
        if not token_out:
            click.echo(token)
    _run(go)


@delegations.command("list")
@_common
def delegations_list(url: str | None, id_token_file: str | None, as_json: bool,
                     timeout: float) -> None:
    """Your delegations."""
    def go() -> None:
        body = _client(url, id_token_file, timeout).call("GET", "/v1/delegations")
        if as_json:
            click.echo(json.dumps(body, indent=2))
            return
        for d in body.get("delegations", []):
            click.echo("  ".join(clean(v, 200) for v in (
                d["delegation_id"], d["status"], d["agent"], ",".join(d["targets"]),
                " ".join(d["scopes"]) or "-", f"expires {d['expires_at']}", f"uses {d['uses']}")))
    _run(go)


@delegations.command("revoke")
@click.argument("delegation_id")
@_common
def delegations_revoke(delegation_id: str, url: str | None, id_token_file: str | None,
                       as_json: bool, timeout: float) -> None:
    """Revoke a delegation and every credential minted under it."""
    def go() -> None:
        body = _client(url, id_token_file, timeout).call(
            "POST", f"/v1/delegations/{urllib.parse.quote(delegation_id, safe='')}/revoke", {})
        if as_json:
            click.echo(json.dumps(body, indent=2))
        else:
            click.echo(f"delegation {body['delegation_id']} revoked; "
                       f"{len(body.get('credentials_revoked') or [])} credential(s) revoked")
    _run(go)
