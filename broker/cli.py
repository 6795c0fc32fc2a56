"""The ``broker`` command: serve, check policies, verify the ledger, rotate keys."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from broker import config as cfg

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _config() -> dict[str, Any]:
    return {**cfg.DEFAULTS, **cfg.env_config()}


@click.group()
@click.version_option(package_name="nhi-broker", prog_name="broker")
def main() -> None:
    """nhi-broker: attested token exchange for non-human identities."""


# -- serve ----------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (default 2 x CPUs, 2..8).")
@click.option("--threads", type=int, default=4, show_default=True, help="Threads per worker.")
@click.option("--dev", is_flag=True, help="Werkzeug's single-process development server instead of gunicorn.")
def serve(host: str, port: int, workers: int | None, threads: int, dev: bool) -> None:
    """Run the broker (gunicorn with several workers unless --dev)."""
    from broker import build_context
    from broker.ledger import LedgerUnavailable
    from broker.policy import PolicyError
    from broker.server import serve as run_server

    config = _config()
    try:
        ctx = build_context(config)          # checks policies, creates schema and signing key
    except PolicyError as exc:
        err_console.print(f"[red]refusing to start: the policy set in {cfg.policy_dir(config)} is invalid[/red]")
        for problem in exc.problems:
            err_console.print(f"  {problem}")
        sys.exit(2)
    except LedgerUnavailable as exc:
        err_console.print(f"[red]refusing to start: the ledger is unreachable[/red] "
                          f"({cfg.redact_url(cfg.database_url(config))}): {exc}")
        sys.exit(3)
    ctx.close()
    run_server(host=host, port=port, workers=workers, threads=threads, dev=dev)


# -- policy ---------------------------------------------------------------------------------
@main.group()
def policy() -> None:
    """Trust policies."""


@policy.command("check")
@click.argument("directory", required=False)
def policy_check(directory: str | None) -> None:
    """Report every problem in a policy directory (default $BROKER_POLICY_DIR); non-zero if any."""
    from broker.policy import check_policy_dir, load_policy_dir

    directory = directory or cfg.policy_dir(_config())
    problems = check_policy_dir(directory)
    if problems:
        for problem in problems:
            err_console.print(str(problem), markup=False)
        err_console.print(f"[red]{len(problems)} problem(s)[/red]")
        sys.exit(1)
    policy_set = load_policy_dir(directory)
    console.print(f"ok: {len(policy_set.issuers)} issuer(s), {len(policy_set.targets)} target(s), "
                  f"{len(policy_set.policies)} policy(ies), {len(policy_set.clients)} client(s) "
                  f"— digest {policy_set.digest}")


# -- ledger ---------------------------------------------------------------------------------
@main.group()
def ledger() -> None:
    """The append-only, hash-chained ledger."""


@ledger.command("verify")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ledger_verify(database_url: str | None, as_json: bool) -> None:
    """Recompute the hash chain: exit 0 when intact, 1 naming the first bad event."""
    from broker.ledger import LedgerUnavailable, open_ledger

    url = database_url or cfg.database_url(_config())
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


# -- keys -----------------------------------------------------------------------------------
def _signer():
    from broker.policy import PolicyError, load_policy_dir
    from broker.signing import open_signer

    config = _config()
    try:
        retention = load_policy_dir(cfg.policy_dir(config)).max_target_ttl() + 120
    except (PolicyError, OSError):
        retention = 24 * 3600       # without policies, keep old keys published for a day
    return open_signer(cfg.text(config, "SIGNER"), state_dir=cfg.state_dir(config),
                       issuer=cfg.issuer(config), retention=retention)


@main.group()
def keys() -> None:
    """The broker's signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; old public keys stay published until their tokens expire."""
    kid = _signer().rotate()
    console.print(f"new signing key: {kid}")


@keys.command("list")
def keys_list() -> None:
    """Show the keyring."""
    table = Table("kid", "created", "retired", "published")
    for key in _signer().describe():
        table.add_row(key["kid"], str(key["created_at"]), str(key["retired_at"] or "-"),
                      "yes" if key["published"] else "no")
    console.print(table)


# -- dev-only -------------------------------------------------------------------------------
@main.command("dev-issuer", hidden=True)
@click.option("--port", default=0, type=int)
def dev_issuer(port: int) -> None:
    """INSECURE, DEV ONLY: a local OIDC issuer signing GitHub-shaped tokens (needs BROKER_INSECURE_DEV_ISSUER=1)."""
    from broker.devtools.dev_issuer import main as dev_main

    dev_main(["--port", str(port)])


if __name__ == "__main__":  # pragma: no cover
    main()
