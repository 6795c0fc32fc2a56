"""`broker keys …`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.table import Table

from broker import config as cfg
from broker.cli.common import console, env_config

if TYPE_CHECKING:
    from broker.keys import Signer


# -- keys -----------------------------------------------------------------------------------
def _signer() -> Signer:
    from broker.keys import open_signer
    from broker.policy import PolicyError, load_policy_dir

    config = env_config()
    try:
        retention = load_policy_dir(cfg.policy_dir(config)).max_target_ttl() + 120
    except (PolicyError, OSError):
        retention = 24 * 3600       # without policies, keep old keys published for a day
    return open_signer(cfg.text(config, "SIGNER"), state_dir=cfg.state_dir(config),
                       issuer=cfg.issuer(config), retention=retention, config=config)


@click.group()
def keys() -> None:
    """The broker's signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key: published at once, signing after BROKER_KEY_ACTIVATION_DELAY
    (default 90 s, longer than the JWKS cache lifetime); old public keys stay published until
    their tokens expire."""
    signer = _signer()
    kid = signer.rotate()
    console.print(f"new signing key: {kid} (published now; signs in "
                  f"{getattr(signer, 'activation_delay', 0)} s)")


@keys.command("list")
def keys_list() -> None:
    """Show the keyring."""
    table = Table("kid", "created", "retired", "published")
    for key in _signer().describe():
        table.add_row(key["kid"], str(key["created_at"]), str(key["retired_at"] or "-"),
                      "yes" if key["published"] else "no")
    console.print(table)
