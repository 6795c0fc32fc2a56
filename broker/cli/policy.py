"""`broker policy …`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from broker import config as cfg
from broker.cli.common import console, env_config, err_console


# -- policy ---------------------------------------------------------------------------------
@click.group()
def policy() -> None:
    """Trust policies."""


@policy.command("check")
@click.argument("path", required=False)
@click.option("--offline", is_flag=True,
              help="Do not ask the targets' backends (Vault) how they are set up.")
def policy_check(path: str | None, offline: bool) -> None:
    """Report every problem of a policy file or directory (default $BROKER_POLICY_DIR); non-zero
    if any. Warnings (e.g. a Vault role whose revocation leaves sessions open) do not fail it."""
    from broker.policy import PolicyError, load_policy_dir, load_policy_files
    from broker.targets.registry import backend_warnings

    config = env_config()
    path = path or cfg.policy_dir(config)
    try:
        policy_set = load_policy_files([path]) if Path(path).is_file() else load_policy_dir(path)
    except PolicyError as exc:
        for problem in exc.problems:
            err_console.print(str(problem), markup=False)
        err_console.print(f"[red]{len(exc.problems)} problem(s)[/red]")
        sys.exit(1)
    for warning in () if offline else backend_warnings(policy_set, config):
        err_console.print(f"warning: {warning}", markup=False)
    human = f", human-idp {policy_set.human_idp.name}" if policy_set.human_idp is not None else ""
    console.print(f"ok: {len(policy_set.issuers)} issuer(s), {len(policy_set.targets)} target(s), "
                  f"{len(policy_set.policies)} policy(ies), {len(policy_set.clients)} client(s)"
                  f"{human} — digest {policy_set.digest}")
