"""`broker reap`: end expired and revoked credentials at their resource, remove orphans.

The same pass ``broker serve`` runs in the background every ``BROKER_REAPER_INTERVAL``
seconds (see broker/lifecycle/reaper.py); this command is for cron, or for a deployment that turns the
background reaper off. Safe to run while brokers run theirs.
"""
from __future__ import annotations

import json
import sys
import time

import click

from broker import config as cfg
from broker.cli.common import console, env_config, err_console


@click.command()
@click.option("--watch", type=float, default=None, metavar="SECONDS",
              help="Run a pass every SECONDS until interrupted (default: one pass).")
@click.option("--no-orphans", is_flag=True, help="Skip the orphan sweep (roles unknown to the ledger).")
@click.option("--json", "as_json", is_flag=True, help="Print each pass's report as JSON.")
def reap(watch: float | None, no_orphans: bool, as_json: bool) -> None:
    """End expired/revoked credentials (drop their database roles); exit 1 if any could not be."""
    from broker import build_context
    from broker.ledger import LedgerUnavailable
    from broker.lifecycle.reaper import reap_once
    from broker.policy import PolicyError

    config = env_config()
    try:
        ctx = build_context(config)
    except PolicyError as exc:
        err_console.print(f"[red]the policy set in {cfg.policy_dir(config)} is invalid[/red]")
        for problem in exc.problems:
            err_console.print(f"  {problem}", markup=False)
        sys.exit(2)
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unreachable[/red] ({cfg.redact_url(cfg.database_url(config))}):"
                          f" {exc}")
        sys.exit(3)
    grace = cfg.number(config, "REAPER_ORPHAN_GRACE")
    failed = False
    try:
        while True:
            try:
                report = reap_once(ctx, orphans=not no_orphans, orphan_grace=grace)
            except LedgerUnavailable as exc:
                err_console.print(f"[red]ledger unreachable[/red]: {exc}")
                sys.exit(3)
            failed = bool(report.failed)
            if as_json:
                click.echo(json.dumps(report.to_dict(), sort_keys=True))
            else:
                console.print(f"ended {len(report.ended)} credential(s), "
                              f"{report.sessions_terminated} session(s) terminated, "
                              f"{len(report.orphans_removed)} orphan(s) removed"
                              + (f", {report.already_ended} already ended by another reaper"
                                 if report.already_ended else "")
                              + (", skipped (another reaper busy): "
                                 + ", ".join(sorted(set(report.busy_targets)))
                                 if report.busy_targets else ""))
                for failure in report.failed:
                    who = failure.get("credential_id") or failure.get("role")
                    err_console.print(f"  could not end {who}: {failure['reason']}", markup=False)
            if watch is None:
                break
            time.sleep(max(0.1, watch))
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()
    sys.exit(1 if failed else 0)
