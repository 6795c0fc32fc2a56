"""Fixtures for the standards and hardening tests (issue 13): the API tests' policy set and
apps built with create_app whose broker issuer is an https URL (Authlib's metadata models
refuse anything else). Test modules import the fixtures they use by name."""
from __future__ import annotations

from pathlib import Path

import pytest

from broker.devtools.dev_issuer import DevIssuer
from tests.support.apps import app_factory
from tests.support.policies import write_policies

#: The broker's issuer in these tests: an https URL (Authlib's metadata models refuse others).
BROKER_ISSUER = "https://broker.test"


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
