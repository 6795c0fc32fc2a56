"""`broker serve`."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from broker import config as cfg
from broker.cli.common import env_config, err_console

if TYPE_CHECKING:
    from broker.app import BrokerContext


# -- serve ----------------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (default 2 x CPUs, 2..8).")
@click.option("--threads", type=int, default=4, show_default=True, help="Threads per worker.")
@click.option("--dev", is_flag=True, help="Werkzeug's single-process development server instead of gunicorn.")
def serve(host: str, port: int, workers: int | None, threads: int, dev: bool) -> None:
    """Run the broker (gunicorn with several workers unless --dev)."""
    from broker import build_context
    from broker.http.server import serve as run_server
    from broker.ledger import LedgerUnavailable
    from broker.policy import PolicyError

    config = env_config()
    try:
        ctx = build_context(config)          # checks policies, creates schema and signing key
    except PolicyError as exc:
        err_console.print(f"[red]refusing to start: the policy set in {cfg.policy_dir(config)}"
                          " is invalid[/red]")
        for problem in exc.problems:
            err_console.print(f"  {problem}")
        sys.exit(2)
    except LedgerUnavailable as exc:
        err_console.print(f"[red]refusing to start: the ledger is unreachable[/red] "
                          f"({cfg.redact_url(cfg.database_url(config))}): {exc}")
        sys.exit(3)
    try:
        _check_people(ctx, config)
        _sweep_crashed_mints(ctx)
    finally:
        ctx.close()
    run_server(host=host, port=port, workers=workers, threads=threads, dev=dev)


def _sweep_crashed_mints(ctx: BrokerContext) -> None:
    """Before forking: remove what a crash of the previous run on this host left between
    creating a resource and recording its mint (broker/lifecycle/pending.py)."""
    from broker import errors
    from broker.lifecycle.pending import sweep_pending

    try:
        removed = sweep_pending(ctx)
    except errors.BrokerError as exc:     # a target or the ledger is down: the reaper retries
        err_console.print(f"pending-mint sweep postponed: {exc.detail}", markup=False,
                          highlight=False)
        return
    for item in removed:
        err_console.print(f"removed role {item['role']} of target {item['target']}: its mint "
                          "was never recorded (the previous run crashed)", markup=False,
                          highlight=False)


def _check_people(ctx: BrokerContext, config: dict[str, Any]) -> None:
    """Before forking: the human IdP's client secret is readable (never printed), and the
    session key exists (created once here rather than raced for by the workers)."""
    from broker.http.web.people import client_secret, session_secret

    if ctx.policy_set.human_idp is not None:
        try:
            client_secret(ctx.policy_set.human_idp)
        except RuntimeError as exc:
            err_console.print(f"refusing to start: {exc}", markup=False, highlight=False, style="red")
            sys.exit(2)
    session_secret(config, cfg.state_dir(config))
