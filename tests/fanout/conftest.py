from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from fanout_support import running_broker, write_fanout_policies
from broker import create_app
from broker.devtools.dev_issuer import DevIssuer
from broker.ledger import Ledger, open_ledger


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer) -> Path:
    return write_fanout_policies(tmp_path / "policies", dev_issuer.issuer)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def app(tmp_path: Path, policy_dir: Path, database_url: str):
    app = create_app({"TESTING": True, "POLICY_DIR": str(policy_dir),
                      "STATE_DIR": str(tmp_path / "state"), "ISSUER": "http://broker.test",
                      "DATABASE_URL": database_url, "REAPER_INTERVAL": 0})
    yield app
    app.extensions["broker"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app) -> Ledger:
    return app.extensions["broker"].ledger


@dataclass
class HttpBroker:
    """`broker serve` (gunicorn) in its own process, and a ledger handle on its database."""
    url: str
    state_dir: Path
    ledger: Ledger
    dev_issuer: DevIssuer


@pytest.fixture(scope="module")
def http_broker(tmp_path_factory, dev_issuer: DevIssuer) -> Iterator[HttpBroker]:
    root = tmp_path_factory.mktemp("fanout-broker")
    policies = write_fanout_policies(root / "policies", dev_issuer.issuer)
    database = f"sqlite:///{root / 'ledger.db'}"
    env = {"BROKER_POLICY_DIR": str(policies), "BROKER_STATE_DIR": str(root / "state"),
           "BROKER_DATABASE_URL": database, "BROKER_REAPER_INTERVAL": "0"}
    with running_broker(env) as url:
        ledger = open_ledger(database)
        try:
            yield HttpBroker(url=url, state_dir=root / "state", ledger=ledger, dev_issuer=dev_issuer)
        finally:
            ledger.close()
