"""What is stored: secrets redacted before the spool, parameters per setting, caps, and refusal
of statements when the spool cannot be written (audit: required) or counting when it is
best-effort."""
from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time

import psycopg
import pytest

from tests.gateway.gw_support import CREDENTIAL, ROLE, ROLE_PASSWORD, TOKEN, running, tokens, write_config
from tests.support.pg_cluster import free_port

SECRETS = {
    "ALTER ROLE gw_app PASSWORD 'Sekrit-quoted-1'": "Sekrit-quoted-1",
    "ALTER ROLE gw_app PASSWORD 'Sekrit-unterminated-2": "Sekrit-unterminated-2",
    "ALTER ROLE gw_app PASSWORD Sekrit_unquoted_3": "Sekrit_unquoted_3",
    "ALTER ROLE gw_app PASSWORD U&'Sekrit\\002Duni-4'": "Sekrit",
    "SELECT 'host=db password=Sekrit-conn-5'::int": "Sekrit-conn-5",
}


@contextlib.contextmanager
def _restoring_password(cluster):
    """The statements under test really change gw_app's password: put it back afterwards."""
    try:
        yield
    finally:
        with psycopg.connect(cluster.admin_dsn, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {ROLE} PASSWORD '{ROLE_PASSWORD}'")


def _spool_text(gw) -> str:
    return "".join(p.read_text(errors="replace") for p in gw.spool_dir.glob("*.spool"))


def test_secrets_never_reach_the_spool_or_the_records(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens())
    with running(gw), _restoring_password(cluster):
        with psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb",
                             autocommit=True) as conn:
            for statement in SECRETS:
                try:
                    conn.pgconn.exec_(statement.encode())          # simple Query
                    conn.execute(statement, prepare=False)          # extended (Parse)
                except psycopg.Error:
                    pass
            try:
                conn.execute("select 1; " + next(iter(SECRETS)))    # one secret in a multi-statement
            except psycopg.Error:
                pass
            spool = _spool_text(gw)                                  # live segment, before the drain
            assert "ALTER ROLE gw_app PASSWORD" in spool
        records = gw.wait_records(lambda rs: any(r["type"] == "disconnect" for r in rs))
        stored = gw.records_path.read_text()
    for secret in SECRETS.values():
        assert secret not in spool and secret not in stored, secret
    usage = [r for r in records if r["type"] == "usage"]
    errors = [u for u in usage if u["outcome"] == "error"]
    assert errors and all("error" not in u for u in errors)   # the server's echo of a secret is not kept
    assert any(u["statement"] == "ALTER ROLE gw_app PASSWORD '***'" and u["command_tag"] == "ALTER ROLE"
               for u in usage)


@pytest.mark.parametrize("mode", ["none", "hashed", "full"])
def test_parameters_per_setting(cluster, tmp_path, mode):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(),
                      gateway={"parameters": mode})
    value = "param-value-" + mode
    with running(gw):
        with psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb") as conn:
            conn.execute("select %s::text", (value,))
            spool = _spool_text(gw)
        gw.wait_records(lambda rs: any(r["type"] == "disconnect" for r in rs))
    (usage,) = [u for u in gw.usage() if u["statement"] == "select $1::text"]
    if mode == "none":
        assert "parameters" not in usage
    elif mode == "hashed":
        assert usage["parameters"] == [hashlib.sha256(value.encode()).hexdigest()]
    else:
        assert usage["parameters"] == [value]
    assert (value in spool) == (mode == "full")
    assert (value in gw.records_path.read_text()) == (mode == "full")


def test_long_statements_are_capped_with_the_hash_of_the_whole(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(),
                      gateway={"max_statement_bytes": 100})
    statement = "select '" + "y" * 500 + "' as long_one"
    with running(gw):
        with psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb") as conn:
            conn.pgconn.exec_(statement.encode())
        gw.wait_records(lambda rs: any(r["type"] == "disconnect" for r in rs))
    (usage,) = gw.usage()
    assert usage["truncated"] is True and len(usage["statement"].encode()) == 100
    assert usage["statement_bytes"] == len(statement)
    assert usage["statement_sha256"] == hashlib.sha256(statement.encode()).hexdigest()


def _worker_pids(gw) -> list[int]:
    pid = gw.proc.pid
    return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def _limit_spool(gw) -> None:
    """Make the worker's spool unwritable: RLIMIT_FSIZE at the current size (writes get EFBIG)."""
    size = max(p.stat().st_size for p in gw.spool_dir.glob("*.spool"))
    for pid in _worker_pids(gw):
        subprocess.run(["prlimit", f"--pid={pid}", f"--fsize={size}:unlimited"], check=True)


def test_required_audit_refuses_statements_it_cannot_record(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens())
    with running(gw):
        dsn = f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table if not exists unrecorded (a int)")
            time.sleep(0.1)
            _limit_spool(gw)
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("insert into unrecorded values (1)")
            assert "cannot record statements" in str(info.value)
        with psycopg.connect(cluster.dsn("gwdb")) as admin:
            assert admin.execute("select count(*) from unrecorded").fetchone() == (0,)


def test_best_effort_runs_statements_and_counts_what_it_dropped(cluster, tmp_path):
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(),
                      gateway={"audit": "best-effort"})
    with running(gw):
        dsn = f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table if not exists besteffort (a int)")
            time.sleep(0.1)
            _limit_spool(gw)
            conn.execute("insert into besteffort values (1)")
            for pid in _worker_pids(gw):
                subprocess.run(["prlimit", f"--pid={pid}", "--fsize=unlimited:unlimited"], check=True)
            conn.execute("insert into besteffort values (2)")
        with psycopg.connect(cluster.dsn("gwdb")) as admin:
            assert admin.execute("select count(*) from besteffort").fetchone() == (2,)
        records = gw.wait_records(lambda rs: any(r["type"] == "disconnect" for r in rs))
    disconnect = next(r for r in records if r["type"] == "disconnect")
    assert disconnect["records_dropped"] >= 1
