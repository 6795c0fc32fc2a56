"""Fixtures of the exchange tests: a broker context with no HTTP server at all (the pipeline's
unit tests), and an app and a real server with the fan-out policies (derivation)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import build_context
from broker.app import BrokerContext
from broker.devtools.dev_issuer import DevIssuer
from tests.support.fanout import app, http_broker, policy_dir  # noqa: F401  (fixtures)
from tests.support.policies import write_policies


@pytest.fixture
def ctx(tmp_path: Path, dev_issuer: DevIssuer) -> Iterator[BrokerContext]:
    """A broker context built the way create_app builds it, with no HTTP server at all."""
    policies = write_policies(tmp_path / "policies", dev_issuer.issuer)
    context = build_context({"POLICY_DIR": str(policies), "STATE_DIR": str(tmp_path / "state"),
                             "ISSUER": "http://broker.test",
                             "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"})
    yield context
    context.close()
