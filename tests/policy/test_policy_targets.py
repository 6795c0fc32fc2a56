"""The target type registry: later issues add types (postgres, vault-database) with their own keys."""
from __future__ import annotations

import pytest

from broker.policy import TARGET_TYPES, PolicyError, register_target_type
from broker.policy.targets import TargetContext
from tests.policy.policy_support import dedent


@pytest.fixture
def example_type():
    """Register a made-up type for one test, then remove it."""
    def validate(ctx: TargetContext):
        limit = ctx.options.get("connection_limit", 5)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            yield ctx.problem("connection_limit", "connection_limit must be an integer from 1 to 100")
        else:
            ctx.options["connection_limit"] = limit          # a default filled in by the type

    register_target_type("example-db", {"admin_dsn_env", "connection_limit"}, validate,
                         required_keys={"admin_dsn_env"})
    yield
    del TARGET_TYPES["example-db"]


def test_jwt_is_registered_without_extra_keys():
    assert TARGET_TYPES["jwt"].allowed_keys == frozenset()


def test_a_registered_type_allows_its_keys_and_normalises_options(example_type):
    from broker.policy import load_policy_text

    target = load_policy_text(dedent("""
        kind: target
        name: db
        type: example-db
        max_ttl: 5m
        admin_dsn_env: BROKER_DB_ADMIN_DSN
    """)).targets["db"]
    assert target.type == "example-db"
    assert target.options == {"admin_dsn_env": "BROKER_DB_ADMIN_DSN", "connection_limit": 5}


@pytest.mark.parametrize("extra, line, message", [
    ("admin_dsn_env: X\nconnection_limit: 0\n", 6, "target 'db': connection_limit must be an integer from 1 to 100"),
    ("", 1, "target 'db': missing required key 'admin_dsn_env'"),
    ("admin_dsn_env: X\ngrants: [select]\n", 6,
     "target 'db': unknown key 'grants' (allowed: admin_dsn_env, audience, connection_limit, kind, max_ttl, name, type)"),
], ids=["validator problem at its key", "type's required key", "key the type does not allow"])
def test_a_registered_type_reports_problems_with_lines(example_type, extra, line, message):
    from broker.policy import load_policy_text

    with pytest.raises(PolicyError) as info:
        load_policy_text("kind: target\nname: db\ntype: example-db\nmax_ttl: 60\n" + extra, "t.yaml")
    assert [(p.file, p.line, p.message) for p in info.value.problems] == [("t.yaml", line, message)]


def test_registration_mistakes_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_target_type("jwt", ())
    with pytest.raises(ValueError, match="redefines common keys"):
        register_target_type("odd", {"audience"})
    with pytest.raises(ValueError, match="are not allowed keys"):
        register_target_type("odd", {"a"}, required_keys={"b"})
    assert "odd" not in TARGET_TYPES
