from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from shared import app_factory

from approvals_support import CAROL, CLIENT_ID, CLIENT_SECRET, NOUSER, running_broker, write_approval_policies
from broker.devtools.dev_human_idp import DevHumanIdP
from broker.devtools.dev_issuer import DevIssuer
from broker.ledger import Ledger, open_ledger

BROKER_TEST_URL = "http://broker.test"


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def human_idp() -> Iterator[DevHumanIdP]:
    with DevHumanIdP() as idp:
        idp.add_user(CAROL)
        idp.add_user(NOUSER)
        idp.add_client(CLIENT_ID, CLIENT_SECRET, [f"{BROKER_TEST_URL}/login/callback"])
        yield idp


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer, human_idp: DevHumanIdP) -> Path:
    return write_approval_policies(tmp_path / "policies", dev_issuer.issuer, human_idp.issuer)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER=BROKER_TEST_URL, REAPER_INTERVAL=0, APPROVAL_POLL_INTERVAL=0) as factory:
        yield factory


@pytest.fixture
def app(make_app, database_url):
    return make_app(DATABASE_URL=database_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app) -> Ledger:
    return app.extensions["broker"].ledger


@dataclass
class HttpBroker:
    url: str
    ledger: Ledger
    dev_issuer: DevIssuer
    human_idp: DevHumanIdP


@pytest.fixture(scope="module")
def http_broker(tmp_path_factory, dev_issuer: DevIssuer, human_idp: DevHumanIdP) -> Iterator[HttpBroker]:
    """`broker serve` (gunicorn, 2 workers) with the approval policies; polls every second."""
    root = tmp_path_factory.mktemp("approvals-broker")
    policies = write_approval_policies(root / "policies", dev_issuer.issuer, human_idp.issuer)
    database = f"sqlite:///{root / 'ledger.db'}"
    env = {"BROKER_POLICY_DIR": str(policies), "BROKER_STATE_DIR": str(root / "state"),
           "BROKER_DATABASE_URL": database, "BROKER_REAPER_INTERVAL": "0",
           "BROKER_APPROVAL_POLL_INTERVAL": "1"}
    port_holder: dict[str, str] = {}
    with running_broker(env) as url:
        port_holder["url"] = url
        human_idp.add_client(CLIENT_ID, CLIENT_SECRET, [f"{BROKER_TEST_URL}/login/callback",
                                                        f"{url}/login/callback"])
        ledger = open_ledger(database)
        try:
            yield HttpBroker(url=url, ledger=ledger, dev_issuer=dev_issuer, human_idp=human_idp)
        finally:
            ledger.close()
