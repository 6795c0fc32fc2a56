"""The ``broker`` command. Each command group lives in its own module and is registered here."""
from __future__ import annotations

import click

from broker.cli import approvals, audit, devtools, exchange, ingest, keys, ledger, policy, reap, serve


@click.group()
@click.version_option(package_name="nhi-broker", prog_name="broker")
def main() -> None:
    """nhi-broker: attested token exchange for non-human identities."""


main.add_command(serve.serve)
main.add_command(policy.policy)
main.add_command(ledger.ledger)
main.add_command(keys.keys)
main.add_command(audit.audit)
main.add_command(devtools.dev_issuer)
main.add_command(reap.reap)
main.add_command(ingest.ingest)
main.add_command(exchange.exchange)
main.add_command(approvals.approvals)
main.add_command(approvals.delegations)
