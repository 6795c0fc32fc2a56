"""`broker exchange`: the CI step. The command itself is :mod:`broker.sdk.exchange` (standard
library only, so a client-only install runs it as ``python -m broker.sdk.exchange``); this is
its name in the ``broker`` command."""
from __future__ import annotations

import sys

import click


@click.command("exchange", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def exchange(ctx: click.Context) -> None:
    """Exchange this job's attestation for a credential (the CI step; --help for options)."""
    from broker.sdk.exchange import main

    sys.exit(main(ctx.args))
