"""The one registry of target kinds: ``type:`` of a target document -> its kind.

Filled here, and only here. The policy loader takes each kind's policy keys from it
(:data:`broker.policy.targets.TARGET_TYPES`) and ``create_app`` builds one instance of each
(:func:`build_kinds`): a new kind is one module and one line below.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from broker.targets.aws import AWSKind
from broker.targets.base import TargetKind
from broker.targets.jwt import JWTKind
from broker.targets.postgres import PostgresKind
from broker.targets.vault_database import VaultDatabaseKind

if TYPE_CHECKING:
    from broker.keys import Signer
    from broker.policy.model import PolicySet

KINDS: dict[str, type[TargetKind]] = {
    "jwt": JWTKind,
    "postgres": PostgresKind,
    "vault-database": VaultDatabaseKind,
    "aws": AWSKind,
}


def build_kinds(config: Mapping[str, Any], *, policy_set: PolicySet | None = None,
                signer: Signer | None = None) -> dict[str, TargetKind]:
    """One instance of each kind, set up from the configuration, told the policy set's
    targets of its type and, when it declares ``signs``, given the broker's ``signer``."""
    kinds = {name: kind.from_config(config) for name, kind in KINDS.items()}
    for kind in kinds.values():
        if policy_set is not None:
            kind.attach(policy_set)
        if signer is not None and kind.capabilities.signs:
            kind.use_signer(signer)
    return kinds


def backend_warnings(policy_set: PolicySet, config: Mapping[str, Any]) -> list[str]:
    """What the backends say of the policy set's targets, from every kind that declares
    ``check_backend`` (e.g. a Vault role whose revocation leaves sessions open); for
    ``broker policy check``. A backend the broker cannot reach says nothing."""
    warnings: list[str] = []
    for name, kind_class in KINDS.items():
        targets = [t for t in policy_set.targets.values() if t.type == name]
        if not kind_class.capabilities.check_backend or not targets:
            continue
        kind = kind_class.from_config(config)
        try:
            for target in sorted(targets, key=lambda t: t.name):
                warnings.extend(kind.backend_warnings(target))
        finally:
            kind.close()
    return warnings
