"""Fixtures of the approval and delegation tests: the dev human IdP, the approval policies,
apps on them (SQLite and PostgreSQL), and a real server that polls every second."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.devtools.dev_human_idp import DevHumanIdP
from broker.devtools.dev_issuer import DevIssuer
from broker.ledger import Ledger, open_ledger
from tests.support.apps import app_factory
from tests.support.people import (
    BROKER_TEST_URL,
    CLIENT_ID,
    CLIENT_SECRET,
    human_idp,  # noqa: F401  (a fixture)
    write_approval_policies,
)
from tests.support.server import running_broker


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer, human_idp: DevHumanIdP) -> Path:  # noqa: F811
    return write_approval_policies(tmp_path / "policies", dev_issuer.issuer, human_idp.issuer)


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER=BROKER_TEST_URL, REAPER_INTERVAL=0, APPROVAL_POLL_INTERVAL=0) as factory:
        yield factory


@dataclass
class HttpBroker:
    url: str
    ledger: Ledger
    dev_issuer: DevIssuer
    human_idp: DevHumanIdP


@pytest.fixture(scope="module")
def http_broker(tmp_path_factory, dev_issuer: DevIssuer,
                human_idp: DevHumanIdP) -> Iterator[HttpBroker]:  # noqa: F811
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
