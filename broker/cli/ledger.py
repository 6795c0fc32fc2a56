"""`broker ledger …`."""
from __future__ import annotations

import json
import sys

import click

from broker import config as cfg
from broker.cli.common import console, env_config, err_console


# -- ledger ---------------------------------------------------------------------------------
@click.group()
def ledger() -> None:
    """The append-only, hash-chained ledger."""


@ledger.command("verify")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ledger_verify(database_url: str | None, as_json: bool) -> None:
    """Recompute the hash chain: exit 0 when intact, 1 naming the first bad event."""
    from broker.ledger import LedgerUnavailable, open_ledger

    url = database_url or cfg.database_url(env_config())
    try:
        store = open_ledger(url)
        report = store.verify()
        store.close()
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unreachable[/red] ({cfg.redact_url(url)}): {exc}")
        sys.exit(3)
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "count": report.count,
                               "first_bad_seq": report.first_bad_seq, "reason": report.reason}))
    elif report.ok:
        console.print(f"ok: {report.count} events, chain intact")
    else:
        err_console.print(f"[red]TAMPERED[/red]: first bad event seq={report.first_bad_seq}: "
                          f"{report.reason} ({report.count} events read)")
    sys.exit(0 if report.ok else 1)
