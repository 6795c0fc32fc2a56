"""`broker policy …`."""
from __future__ import annotations

import sys

import click

from broker import config as cfg
from broker.cli.common import console, env_config, err_console


# -- policy ---------------------------------------------------------------------------------
@click.group()
def policy() -> None:
    """Trust policies."""


@policy.command("check")
@click.argument("directory", required=False)
def policy_check(directory: str | None) -> None:
    """Report every problem in a policy directory (default $BROKER_POLICY_DIR); non-zero if any."""
    from broker.policy import check_policy_dir, load_policy_dir

    directory = directory or cfg.policy_dir(env_config())
    problems = check_policy_dir(directory)
    if problems:
        for problem in problems:
            err_console.print(str(problem), markup=False)
        err_console.print(f"[red]{len(problems)} problem(s)[/red]")
        sys.exit(1)
    policy_set = load_policy_dir(directory)
    human = f", human-idp {policy_set.human_idp.name}" if policy_set.human_idp is not None else ""
    console.print(f"ok: {len(policy_set.issuers)} issuer(s), {len(policy_set.targets)} target(s), "
                  f"{len(policy_set.policies)} policy(ies), {len(policy_set.clients)} client(s)"
                  f"{human} — digest {policy_set.digest}")
