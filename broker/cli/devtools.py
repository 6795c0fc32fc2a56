"""Dev-only commands (hidden)."""
from __future__ import annotations

import click


# -- dev-only -------------------------------------------------------------------------------
@click.command("dev-issuer", hidden=True)
@click.option("--port", default=0, type=int)
def dev_issuer(port: int) -> None:
    """INSECURE, DEV ONLY: a local OIDC issuer signing GitHub-shaped tokens (needs
    BROKER_INSECURE_DEV_ISSUER=1)."""
    from broker.devtools.dev_issuer import main as dev_main

    dev_main(["--port", str(port)])
