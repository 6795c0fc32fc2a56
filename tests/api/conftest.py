from __future__ import annotations

from pathlib import Path

import pytest

from shared import app_factory

from api_support import write_policies
from broker.devtools.dev_issuer import DevIssuer


@pytest.fixture(scope="module")
def dev_issuer():
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer) -> Path:
    return write_policies(tmp_path / "policies", dev_issuer.issuer)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test") as factory:
        yield factory


@pytest.fixture
def app(make_app, database_url):
    return make_app(DATABASE_URL=database_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    return app.extensions["broker"].ledger
