"""`broker gateway`: the PostgreSQL wire-protocol gateway for every target with a `gateway:` block."""
from __future__ import annotations

import sys

import click

from broker import config as cfg
from broker.cli.common import env_config, err_console


@click.command()
@click.option("--workers", type=int, default=None,
              help="Worker processes sharing each listen port (default $BROKER_GATEWAY_WORKERS, 2).")
@click.option("--target", "targets", multiple=True,
              help="Serve only this target (repeatable; default every target with a gateway: block).")
@click.option("--health", default=None,
              help="host:port of the health check, GET /healthz (default $BROKER_GATEWAY_HEALTH; off).")
def gateway(workers: int | None, targets: tuple[str, ...], health: str | None) -> None:
    """Run the gateway: clients log in with their credential, every statement is recorded."""
    from broker.gateway.server import Supervisor, serve
    from broker.gateway.service import LedgerSink, RevocationWatcher, authenticator_factory, gateway_config
    from broker.ledger import LedgerUnavailable, open_ledger
    from broker.policy import PolicyError, load_policy_dir

    config = env_config()
    try:
        policy_set = load_policy_dir(cfg.policy_dir(config))
    except PolicyError as exc:
        err_console.print(f"[red]refusing to start: the policy set in {cfg.policy_dir(config)} "
                          "is invalid[/red]")
        for problem in exc.problems:
            err_console.print(f"  {problem}")
        sys.exit(2)
    gw_config = gateway_config(policy_set, config, workers=workers, health=health, only=targets)
    try:
        ledger = open_ledger(cfg.database_url(config))
    except LedgerUnavailable as exc:
        err_console.print(f"[red]refusing to start: the ledger is unreachable[/red] "
                          f"({cfg.redact_url(cfg.database_url(config))}): {exc}")
        sys.exit(3)
    watchers: list[RevocationWatcher] = []

    def on_started(supervisor: Supervisor) -> None:
        watchers.append(RevocationWatcher(ledger, supervisor.end_credential).start())
        names = ", ".join(f"{lc.target} on {lc.listen}" for lc in gw_config.listeners)
        err_console.print(f"broker gateway: serving {names} ({gw_config.workers} workers)",
                          markup=False, highlight=False)

    try:
        code = serve(gw_config,
                     authenticators=authenticator_factory(
                         config, retention=policy_set.max_target_ttl() + 120),
                     sink=LedgerSink(ledger), on_started=on_started)
    finally:
        for watcher in watchers:
            watcher.stop()
        ledger.close()
    sys.exit(code)



