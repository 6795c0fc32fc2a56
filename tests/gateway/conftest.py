"""Fixtures: one throwaway SCRAM cluster per session, a role for each test credential, and the
real gateway process (``python -m broker.gateway.devserver``) in front of it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.gw_support import (
    CREDENTIAL,
    ROLE,
    ROLE_PASSWORD,
    TOKEN,
    GatewayProcess,
    tokens,
    write_config,
)
from tests.support.pg_cluster import Cluster, free_port, start_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = start_cluster(ssl=True, logging=False, max_connections=100)
    import psycopg

    with psycopg.connect(c.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        conn.execute(f"CREATE DATABASE gwdb OWNER {ROLE}")
    yield c
    c.stop()


@pytest.fixture
def gateway(cluster: Cluster, tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens())
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def gw_dsn(gateway: GatewayProcess) -> str:
    return f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gateway.port}/gwdb"
