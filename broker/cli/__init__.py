"""The ``broker`` command. Each command group lives in its own module and is registered here."""
from __future__ import annotations

import logging
import os

import click

from broker.cli import (
    approvals,
    audit,
    devtools,
    exchange,
    gateway,
    ingest,
    keys,
    ledger,
    policy,
    reap,
    serve,
)


class _BrokerGroup(click.Group):
    """Misconfiguration (a bad ``BROKER_*`` value, an unknown signer, a Transit signer without
    Vault settings, a missing optional extra) is one line on stderr and exit status 2, never a
    traceback; ``BROKER_LOG_LEVEL=DEBUG`` shows the traceback too."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise                                   # click's own: --help, usage errors
        except (ValueError, ImportError, RuntimeError) as exc:
            if os.environ.get("BROKER_LOG_LEVEL", "").upper() == "DEBUG":
                logging.getLogger("broker.cli").exception("configuration error")
            message = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, ImportError) and exc.name:
                extras = _EXTRAS.get(exc.name, "postgres,redis,vault")
                message = (f"the Python package {exc.name!r} is not installed; install the extra "
                           f"that needs it, e.g. pip install 'nhi-broker[{extras}]'")
            click.echo(f"broker: {message}", err=True)
            ctx.exit(2)


#: optional dependency -> the extra that installs it
_EXTRAS = {"psycopg": "postgres", "psycopg_pool": "postgres", "redis": "redis", "hvac": "vault"}


@click.group(cls=_BrokerGroup)
@click.version_option(package_name="nhi-broker", prog_name="broker")
def main() -> None:
    """nhi-broker: attested token exchange for non-human identities."""


main.add_command(serve.serve)
main.add_command(gateway.gateway)
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
