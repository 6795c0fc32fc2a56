from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import build_context
from broker.app import BrokerContext
from broker.devtools.dev_issuer import DevIssuer


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def ctx(tmp_path: Path, dev_issuer: DevIssuer) -> Iterator[BrokerContext]:
    """A broker context built the way create_app builds it, with no HTTP server at all."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
    from api_support import write_policies

    policies = write_policies(tmp_path / "policies", dev_issuer.issuer)
    context = build_context({"POLICY_DIR": str(policies), "STATE_DIR": str(tmp_path / "state"),
                             "ISSUER": "http://broker.test",
                             "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"})
    yield context
    context.close()
