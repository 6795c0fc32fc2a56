"""`broker audit …`: lineage, runs, principals, who ran a statement, event search, SIEM export.

Reads the local ledger (``BROKER_DATABASE_URL`` or ``--database-url``) or, with ``--url``, a
remote broker's audit API as a client that ``may: [audit]`` (``--client-id``/``--client-secret``
or ``BROKER_CLIENT_ID``/``BROKER_CLIENT_SECRET``; prefer the environment for the secret).
Readable trees and tables by default; ``--json`` prints the API's JSON.

Exit codes: 0 found, 1 not found, 2 bad input, 3 ledger or broker unreachable, 4 refused
(client authentication or permission).
"""
from __future__ import annotations

import functools
import json
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from broker import config as cfg
from broker.cli.common import console, env_config, err_console
from broker.ledger.events import EVENT_TYPES

Source = Any


def clean(value: Any, limit: int | None = None) -> str:
    """Attacker-influenced text made safe for a terminal: control characters (escape
    sequences included) become ``?``; optionally shortened."""
    text = "" if value is None else str(value)
    text = "".join("?" if (ord(c) < 0x20 and c not in "\t") or 0x7F <= ord(c) < 0xA0 else c
                   for c in text)
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    return text


def compact(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def authorizer_text(authorizer: Any) -> str:
    """``policy NAME (sha256:…)`` or ``approved by WHO (approval id)``."""
    from broker.http.web.graph import authorizer_text as parts

    label, detail = parts(authorizer)
    return f"{label} ({detail})" if detail else label


def source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``/``--client-id``/``--client-secret``/``--database-url``/``--json``, resolved
    into a ``source`` argument (and closed afterwards)."""
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's shapes).")
    @click.option("--database-url", default=None,
                  help="Local ledger URL (default $BROKER_DATABASE_URL).")
    @click.option("--client-secret", envvar="BROKER_CLIENT_SECRET", default=None,
                  help="Client secret for --url (default $BROKER_CLIENT_SECRET).")
    @click.option("--client-id", envvar="BROKER_CLIENT_ID", default=None,
                  help="Client id for --url (default $BROKER_CLIENT_ID).")
    @click.option("--url", default=None, help="A remote broker's base URL (else: local ledger).")
    @functools.wraps(fn)
    def wrapper(url: str | None, client_id: str | None, client_secret: str | None,
                database_url: str | None, as_json: bool, **kwargs: Any) -> None:
        from broker.audit.client import AuditError, LocalSource, RemoteSource

        try:
            if url:
                if not client_id or not client_secret:
                    raise AuditError("--url needs --client-id and --client-secret (or"
                                     " BROKER_CLIENT_ID / BROKER_CLIENT_SECRET)", exit_code=2)
                source: LocalSource | RemoteSource = RemoteSource(url, client_id, client_secret)
            else:
                source = LocalSource(database_url or cfg.database_url(env_config()))
            try:
                fn(source=source, as_json=as_json, **kwargs)
            finally:
                source.close()
        except AuditError as exc:
            err_console.print(Text(f"error: {clean(exc)}", style="red"))
            sys.exit(exc.exit_code)
    return wrapper


def _instant(value: str | None, name: str) -> str | None:
    from broker.audit.params import parse_instant

    if value is None:
        return None
    try:
        return parse_instant(value, relative=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _credential_id(value: str | None) -> str | None:
    from broker.common.ids import is_credential_id

    if value is not None and not is_credential_id(value):
        raise click.BadParameter("not a credential id", param_hint="--credential-id")
    return value


def _print_json(body: Any) -> None:
    click.echo(json.dumps(body, indent=2, ensure_ascii=True))


# -- rendering -------------------------------------------------------------------------------

_STATUS_STYLE = {"active": "green", "revoked": "red", "expired": "dim"}


def _credential_label(node: dict[str, Any], *, highlight: bool = False) -> Text:
    usage = (node.get("usage") or {}).get("count", 0)
    label = Text(overflow="fold")
    label.append(clean(node["credential_id"]), style="bold reverse" if highlight else "bold")
    label.append(" ")
    label.append(clean(node.get("status")), style=_STATUS_STYLE.get(node.get("status") or "", ""))
    label.append(f"  {clean(node.get('principal'), 80)} → {clean(node.get('target'))}")
    label.append(f"  {usage} use{'s' if usage != 1 else ''}", style="cyan")
    if node.get("revoked_at"):
        label.append(f"  revoked {node['revoked_at']}", style="red")
    return label


def _statement_label(event: dict[str, Any]) -> Text:
    details = event.get("details") or {}
    text = Text(overflow="fold")
    text.append(f"#{event['seq']} {event['ts']} ", style="dim")
    text.append(clean(details.get("statement") or details.get("operation") or event["type"], 160),
                style="magenta")
    for key in ("database", "session_id", "client_addr"):
        if details.get(key):
            text.append(f" {key}={clean(details[key], 40)}", style="dim")
    return text


def _add_usage(tree: Tree, node: dict[str, Any]) -> None:
    usage = node.get("usage") or {}
    for event in usage.get("events") or []:
        tree.add(_statement_label(event))
    more = int(usage.get("count", 0)) - len(usage.get("events") or [])
    if more > 0:
        tree.add(Text(f"… {more} more usage events (broker audit events --type usage"
                      f" --credential-id {node['credential_id']})", style="dim"))


def _add_children(tree: Tree, nodes: list[dict[str, Any]], *, usage: bool) -> None:
    for node in nodes:
        branch = tree.add(_credential_label(node))
        if usage:
            _add_usage(branch, node)
        _add_children(branch, node.get("children") or [], usage=usage)


def render_lineage(body: dict[str, Any]) -> None:
    chain = list(reversed(body.get("ancestors") or []))          # root first
    credential = body["credential"]
    root = chain[0] if chain else credential
    top = Tree(Text("authorizer: ") + Text(clean(authorizer_text(root.get("authorizer"))),
                                           style="yellow"))
    branch = top.add(Text("run: ") + Text(clean(compact(root.get("run"))), style="blue")
                     + Text(f"  (attestation issuer {clean(root.get('issuer'))})", style="dim"))
    for ancestor in chain:
        branch = branch.add(_credential_label(ancestor))
    branch = branch.add(_credential_label(credential, highlight=True))
    _add_children(branch, body.get("descendants") or [], usage=False)
    _add_usage(branch, credential)
    console.print(top, soft_wrap=False)
    notes = []
    if body.get("truncated"):
        notes.append(f"descendants cut at {body.get('descendant_count')}")
    if body.get("depth_limited"):
        notes.append(f"descendants exist below depth {body.get('max_depth')}")
    for event in credential.get("revocations") or []:
        notes.append(f"revoked at {event['ts']} (seq {event['seq']})")
    for event in credential.get("expiries") or []:
        notes.append(f"expired/ended at {event['ts']} (seq {event['seq']})")
    for note in notes:
        console.print(Text(note, style="yellow"))


def render_run(body: dict[str, Any]) -> None:
    attempts = ", ".join(clean(a) for a in body.get("attempts") or []) or "-"
    top = Tree(Text(f"run {clean(body['run_id'])}", style="bold blue")
               + Text(f"  attempts: {attempts}; {body['credential_count']} credential(s),"
                      f" {body['descendant_count']} derived, {len(body['denied'])} denied",
                      style="dim"))
    _add_children(top, body.get("credentials") or [], usage=False)
    console.print(top, soft_wrap=False)
    if body.get("denied"):
        console.print(_events_table(body["denied"], title="denied attempts"))


def render_principal(body: dict[str, Any]) -> None:
    console.print(Text(f"principal {clean(body['principal'])}", style="bold")
                  + Text(f"  {body['since']} → {body['until']}", style="dim"))
    table = Table("credential", "issued", "target", "run", "authorizer", "status", "uses",
                  title="credentials")
    for node in body.get("credentials") or []:
        table.add_row(clean(node["credential_id"]), node["issued_at"], clean(node["target"]),
                      clean(compact(node.get("run")), 60), clean(authorizer_text(node.get("authorizer")), 60),
                      Text(clean(node["status"]), style=_STATUS_STYLE.get(node["status"], "")),
                      str((node.get("usage") or {}).get("count", 0)))
    console.print(table)
    if body.get("denied"):
        console.print(_events_table(body["denied"], title="denied attempts"))


def _summary(event: dict[str, Any]) -> str:
    details = event.get("details") or {}
    for key in ("statement", "reason", "result", "operation"):
        if details.get(key):
            return f"{key}: {details[key]}"
    return compact(details)


def _events_table(events: list[dict[str, Any]], *, title: str | None = None) -> Table:
    table = Table("seq", "time (UTC)", "type", "credential", "principal", "details", title=title)
    for event in events:
        table.add_row(str(event["seq"]), event["ts"], clean(event["type"]),
                      clean(event.get("credential_id") or "-"),
                      clean(event.get("principal") or "-", 60), clean(_summary(event), 120))
    return table


def render_who(body: dict[str, Any], statement: str) -> None:
    table = Table("ran at (UTC)", "principal", "run", "authorizer", "credential", "statement",
                  title=f"who ran {clean(statement, 60)}")
    for hit in body.get("usage") or []:
        table.add_row(clean(hit.get("at") or hit["ts"]), clean(hit.get("principal") or "?", 60),
                      clean(compact(hit.get("run")), 50), clean(authorizer_text(hit.get("authorizer")), 50),
                      clean(hit.get("credential_id") or "-"), clean(hit.get("statement"), 120))
    console.print(table)
    if body.get("next"):
        after = dict(urllib.parse.parse_qsl(body["next"].split("?", 1)[1])).get("after")
        console.print(Text(f"more: --after {after}", style="dim"))


# -- commands --------------------------------------------------------------------------------

@click.group()
def audit() -> None:
    """Lineage, runs, principals and statements from the ledger (local or a remote broker)."""


_tree_options = [
    click.option("--depth", default=16, show_default=True, type=click.IntRange(1, 32),
                 help="How deep to follow derived credentials."),
    click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10000),
                 help="At most this many derived credentials."),
    click.option("--usage-limit", default=10, show_default=True, type=click.IntRange(0, 100),
                 help="Usage events shown per credential (all are counted)."),
]


def tree_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_tree_options):
        fn = option(fn)
    return fn


@audit.command("lineage")
@click.argument("credential_id")
@tree_options
@source_options
def audit_lineage(source: Source, as_json: bool, credential_id: str, depth: int, limit: int,
                  usage_limit: int) -> None:
    """A credential: its ancestors up to the root authorization, its descendants, its usage."""
    body = source.lineage(credential_id, max_depth=depth, limit=limit, usage_limit=usage_limit)
    _print_json(body) if as_json else render_lineage(body)


@audit.command("run")
@click.argument("run_id")
@tree_options
@source_options
def audit_run(source: Source, as_json: bool, run_id: str, depth: int, limit: int,
              usage_limit: int) -> None:
    """Every credential minted for a run (all attempts), their trees, and denied attempts."""
    body = source.run(run_id, max_depth=depth, limit=limit, usage_limit=usage_limit)
    _print_json(body) if as_json else render_run(body)


@audit.command("principal")
@click.argument("principal")
@click.option("--since", default="24h", show_default=True,
              help="Start: RFC 3339, a date, epoch seconds or a duration ago (24h, 7d).")
@click.option("--until", default=None, help="End (default now).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@source_options
def audit_principal(source: Source, as_json: bool, principal: str, since: str,
                    until: str | None, limit: int) -> None:
    """Credentials issued to a principal in a window, and its denied attempts."""
    from broker.ledger.events import utc_timestamp

    start, end = _instant(since, "--since"), _instant(until, "--until") or utc_timestamp()
    body = source.principal(principal, since=start, until=end, limit=limit)
    _print_json(body) if as_json else render_principal(body)


@audit.command("who")
@click.option("--statement", required=True, help="Text the statement contains (case-insensitive).")
@click.option("--since", default=None,
              help="Ran at or after: RFC 3339, a date, epoch seconds or a duration ago (24h).")
@click.option("--until", default=None, help="Ran before.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--after", default=0, type=click.IntRange(0), help="Continue after this seq.")
@source_options
def audit_who(source: Source, as_json: bool, statement: str, since: str | None,
              until: str | None, limit: int, after: int) -> None:
    """Who ran a statement: principal, run and authorizer of every matching usage event
    (``GET /v1/usage`` remotely, the same query locally)."""
    body = source.usage(statement, since=_instant(since, "--since"),
                        until=_instant(until, "--until"), after=after, limit=limit)
    _print_json(body) if as_json else render_who(body, statement)


@audit.command("events")
@click.option("--type", "type_", default=None, type=click.Choice(sorted(EVENT_TYPES)))
@click.option("--principal", default=None)
@click.option("--credential-id", default=None, callback=lambda _c, _p, v: _credential_id(v))
@click.option("--since", default=None, help="RFC 3339, a date, epoch seconds or a duration ago.")
@click.option("--until", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Events per page.")
@click.option("--cursor", default=None, help="Continue a previous listing.")
@source_options
def audit_events(source: Source, as_json: bool, type_: str | None, principal: str | None,
                 credential_id: str | None, since: str | None, until: str | None, limit: int,
                 cursor: str | None) -> None:
    """Search events (one page; follow --cursor for the next)."""
    filters = {"type": type_, "principal": principal, "credential_id": credential_id,
               "since": _instant(since, "--since"), "until": _instant(until, "--until")}
    body = source.events(filters, cursor=cursor, limit=limit)
    if as_json:
        _print_json(body)
        return
    console.print(_events_table(body["events"]))
    if body.get("next_cursor"):
        console.print(Text(f"more: --cursor {body['next_cursor']}", style="dim"))


@audit.command("export")
@click.option("--since", required=True, help="RFC 3339, a date, epoch seconds or a duration ago.")
@click.option("--until", default=None)
@click.option("--type", "type_", default=None, type=click.Choice(sorted(EVENT_TYPES)),
              help="Only this event type.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "ocsf"]), default="jsonl",
              show_default=True, help="Ledger events as they are, or OCSF 1.1.0 events.")
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-",
              help="Write here instead of standard output.")
@source_options
def audit_export(source: Source, as_json: bool, since: str, until: str | None,
                 type_: str | None, fmt: str, out: Any) -> None:
    """Stream events as JSON lines for a SIEM (one event per line, in seq order)."""
    from broker.audit.client import iter_events
    from broker.audit.ocsf import to_ocsf
    from broker.ledger import Event

    filters = {"type": type_, "principal": None, "credential_id": None,
               "since": _instant(since, "--since"), "until": _instant(until, "--until")}
    for body in iter_events(source, filters):
        record = to_ocsf(Event(**body)) if fmt == "ocsf" else body
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()
