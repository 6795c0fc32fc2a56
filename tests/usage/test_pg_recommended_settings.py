"""With the PostgreSQL settings docs/postgres.md recommends, every usage hit carries its
``command_tag`` and ``duration_ms`` — read from a real server's jsonlog, csvlog and stderr log."""
from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from broker.ledger import open_ledger
from broker.usage import ingest_postgres_log
from tests.support.pg_cluster import Cluster, start_cluster

CID = "01jdtestcred0000000000000c"
ROLE = f"nhb_{CID}"
#: the "PostgreSQL settings this needs" block of docs/postgres.md, as it differs from the
#: test cluster's own logging (later lines of postgresql.conf win)
PREFIX = "%m [%p] %q%u@%d %r %c %l %i "
RECOMMENDED = f"""
log_statement = 'none'
log_min_duration_statement = 0
log_line_prefix = '{PREFIX}'
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = start_cluster(RECOMMENDED)
    try:
        with psycopg.connect(started.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-0123456789'").format(sql.Identifier(ROLE)))
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
            conn.execute("INSERT INTO accounts VALUES (1, 10)")
            conn.execute(sql.SQL("GRANT SELECT, UPDATE ON accounts TO {}").format(sql.Identifier(ROLE)))
        yield started
    finally:
        started.stop()


def test_docs_recommend_these_settings() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "postgres.md").read_text()
    block = doc.split("### PostgreSQL settings this needs", 1)[1].split("```", 2)[1]
    assert "log_min_duration_statement = 0" in block and "log_statement = 'none'" in block
    assert f"log_line_prefix = '{PREFIX}'" in block


@pytest.mark.parametrize("fmt, suffix", [("jsonlog", ".json"), ("csvlog", ".csv"), ("stderr", "")])
def test_every_hit_has_its_command_tag_and_duration(cluster: Cluster, tmp_path, fmt, suffix) -> None:
    marker = f"{fmt}-{time.time_ns()}"
    with psycopg.connect(cluster.dsn("postgres").replace("postgres@", f"{ROLE}:pw-0123456789@"),
                         autocommit=True) as conn:
        conn.execute(f"UPDATE accounts SET balance = balance + 1 WHERE id = 1 /* {marker} */")
        conn.execute(f"SELECT balance FROM accounts /* {marker} */")
    cluster.rotate_logs()
    files = [f for f in cluster.log_files(suffix) if (not suffix and f.suffix == "") or f.suffix == suffix]
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        for path in files:
            ingest_postgres_log(ledger, path, fmt=fmt, prefix=PREFIX)
        hits = [e for e in ledger.iter_events()
                if e.type == "usage" and marker in str(e.details.get("statement"))]
    tags = sorted(str(h.details.get("command_tag")) for h in hits)
    assert tags == ["SELECT", "UPDATE"], [h.details for h in hits]
    assert all(isinstance(h.details.get("duration_ms"), float) for h in hits)
