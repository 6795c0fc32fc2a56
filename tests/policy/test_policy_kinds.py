"""Target kinds come from one registry: loading a policy with a target of any kind works in a
fresh interpreter that imported nothing but :mod:`broker.policy` (no import-order luck), and
each kind declares its policy keys and capabilities as data."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from broker.targets.base import Capabilities, TargetKind
from broker.targets.keys import COMMON_TARGET_KEYS, TargetSchema
from broker.targets.registry import KINDS

REPO = Path(__file__).resolve().parents[2]

#: One minimal, valid target document per kind (a new kind adds a line here).
TARGETS = {
    "jwt": "",
    "postgres": "admin_dsn_env: PAYMENTS_DB_ADMIN_DSN\ngrants: []\n",
    "vault-database": "role: payments-readonly\n",
    "aws": "role_arn: arn:aws:iam::123456789012:role/deploy\nregion: eu-west-1\n",
}
#: A max_ttl each kind can grant (AWS sessions last at least 15 minutes).
MAX_TTL = {"aws": "15m"}


def test_every_registered_kind_has_an_example_here():
    assert set(KINDS) == set(TARGETS)


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_a_target_of_each_kind_loads_in_a_fresh_interpreter(kind):
    text = f"kind: target\nname: t\ntype: {kind}\nmax_ttl: {MAX_TTL.get(kind, '5m')}\n{TARGETS[kind]}"
    program = textwrap.dedent(f"""
        import sys
        from broker.policy import load_policy_text
        target = load_policy_text({text!r}).targets["t"]
        assert target.type == {kind!r}, target
        print("loaded", target.type)
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loaded {kind}"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_declares_name_keys_and_capabilities(name):
    kind = KINDS[name]
    assert issubclass(kind, TargetKind) and kind.name == name
    assert isinstance(kind.policy_keys, TargetSchema) and kind.policy_keys.name == name
    assert not kind.policy_keys.allowed_keys & COMMON_TARGET_KEYS
    assert isinstance(kind.capabilities, Capabilities)
    # A declared capability has its operation implemented, an undeclared one is the base's.
    operations = {"reap": ["end_many"], "reconcile": ["reconcile"],
                  "remove_orphans": ["minted_resources", "credential_id_of_resource", "end_orphans"],
                  "check_backend": ["backend_warnings"], "signs": ["use_signer"]}
    for capability, methods in operations.items():
        for method in methods:
            implemented = getattr(kind, method) is not getattr(TargetKind, method)
            assert implemented == getattr(kind.capabilities, capability), (name, method)


def test_the_declared_capabilities():
    assert KINDS["jwt"].capabilities == Capabilities()
    assert KINDS["postgres"].capabilities == Capabilities(reap=True, remove_orphans=True)
    assert KINDS["vault-database"].capabilities == Capabilities(reap=True, reconcile=True,
                                                                 check_backend=True)
    assert KINDS["aws"].capabilities == Capabilities(signs=True, check_backend=True)


def test_the_loader_takes_target_types_explicitly():
    from broker.policy import PolicyError, load_policy_text

    text = "kind: target\nname: t\ntype: postgres\nmax_ttl: 5m\nadmin_dsn_env: X\ngrants: []\n"
    assert load_policy_text(text).targets["t"].type == "postgres"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, target_types={"jwt": KINDS["jwt"].policy_keys})
    assert "unknown target type 'postgres' (one of: jwt)" in str(info.value)


def test_the_reaper_reads_declared_capabilities_only():
    source = (REPO / "broker" / "lifecycle" / "reaper.py").read_text()
    assert "getattr(" not in source and "hasattr(" not in source
    assert "broker.targets.postgres" not in source
