"""Fixtures for the standards and hardening tests (issue 13): a real dev issuer, the API tests'
policy set, apps built with create_app and a broker issuer that is an https URL (the metadata
models refuse anything else)."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import write_policies  # noqa: E402
from broker.devtools.dev_issuer import DevIssuer  # noqa: E402
from shared import app_factory  # noqa: E402
from standards_support import BROKER_ISSUER  # noqa: E402


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer) -> Path:
    return write_policies(tmp_path / "policies", dev_issuer.issuer)


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER=BROKER_ISSUER,
                     DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}") as factory:
        yield factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    return app.extensions["broker"].ledger
