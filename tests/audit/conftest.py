"""Fixtures for the audit tests: the app on SQLite and on PostgreSQL, a populated ledger."""
from __future__ import annotations

from pathlib import Path

import pytest

from audit_support import AUDITOR, basic, build_story, write_audit_policies
from broker import create_app


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_audit_policies(tmp_path / "policies")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def app(tmp_path: Path, policy_dir: Path, database_url: str):
    app = create_app({"TESTING": True, "POLICY_DIR": str(policy_dir),
                      "STATE_DIR": str(tmp_path / "state"), "ISSUER": "http://broker.test",
                      "DATABASE_URL": database_url})
    yield app
    app.extensions["broker"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    return app.extensions["broker"].ledger


@pytest.fixture
def story(ledger):
    return build_story(ledger)


@pytest.fixture
def auth() -> dict[str, str]:
    return basic(*AUDITOR)
