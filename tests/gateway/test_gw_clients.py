"""Real clients through the real gateway process to a real SCRAM cluster: every protocol path
leaves exactly one usage record per statement the database ran."""
from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
import time

import psycopg
import pytest

from tests.gateway.gw_support import CREDENTIAL, TOKEN


def _env(**extra):
    return {**os.environ, "PGPASSWORD": TOKEN, **extra}


def psql(gateway, *args, check=True):
    out = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(gateway.port),
                           "-U", CREDENTIAL, "-d", "gwdb", *args], env=_env(), capture_output=True,
                          text=True, check=False, timeout=60)
    if check and out.returncode:
        raise AssertionError(f"psql failed: {out.stderr}")
    return out


def disconnected(n=1):
    return lambda rs: sum(r["type"] == "disconnect" for r in rs) >= n


def test_psql_multi_statement_gives_one_record_each(gateway):
    out = psql(gateway, "-c", "create table multi (a int); insert into multi values (1), (2); "
                              "select * from multi")
    assert "2 rows" in out.stdout
    gateway.wait_records(disconnected())
    usage = gateway.usage()
    assert [(u["statement"], u["command_tag"], u["rows"]) for u in usage] == [
        ("create table multi (a int)", "CREATE TABLE", None),
        ("insert into multi values (1), (2)", "INSERT 0 2", 2),
        ("select * from multi", "SELECT 2", 2)]
    assert [u["seq"] for u in usage] == [1, 2, 3]
    assert all(u["credential_id"] == CREDENTIAL and u["source"] == "gateway" and u["database"] == "gwdb"
               and u["principal"] == "repo:acme/app" for u in usage)
    connect = next(r for r in gateway.records() if r["type"] == "connect")
    assert connect["upstream_user"] == "gw_app" and connect["client_addr"] == "127.0.0.1"


def test_statements_after_an_error_in_one_query_string_get_no_record(gateway):
    out = psql(gateway, "-c", "select 1; select 1/0; select 2", check=False)
    assert "division by zero" in out.stderr
    gateway.wait_records(disconnected())
    usage = gateway.usage()
    assert [(u["statement"], u["outcome"], u.get("sqlstate")) for u in usage] == [
        ("select 1", "ok", None), ("select 1/0", "error", "22012")]
    assert usage[1]["error"] == "division by zero"


def test_psql_copy_both_ways(gateway, tmp_path):
    data = tmp_path / "in.tsv"
    data.write_text("".join(f"{i}\trow {i}\n" for i in range(1000)))
    psql(gateway, "-c", "create table c (a int, b text)")
    psql(gateway, "-c", f"\\copy c from '{data}'")
    out_file = tmp_path / "out.tsv"
    psql(gateway, "-c", f"\\copy c to '{out_file}'")
    assert out_file.read_text() == data.read_text()
    gateway.wait_records(disconnected(3))
    tags = [u["command_tag"] for u in gateway.usage()]
    assert tags == ["CREATE TABLE", "COPY 1000", "COPY 1000"]


def test_psycopg_simple_extended_prepared_pipeline_copy(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        conn.pgconn.exec_(b"create table t (id int primary key, v text)")          # simple Query
        conn.execute("insert into t values (%s, %s)", (1, "one"))                    # extended, unnamed
        for i in (2, 3, 4):                                                          # named, prepared
            conn.execute("insert into t values (%s, %s)", (i, "secret-param-%d" % i), prepare=True)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into t values (%s, %s)", (1, "dup"))
        with conn.pipeline() as pipe:
            conn.execute("insert into t values (%s, 'p')", (10,))
            conn.execute("insert into t values (%s, 'p')", (11,))
            pipe.sync()
            cur = conn.execute("select count(*) from t")
        assert cur.fetchone() == (6,)
        with conn.cursor() as cur:
            with cur.copy("copy t (id, v) from stdin") as copy:
                for i in range(100, 150):
                    copy.write_row((i, f"c{i}"))
            with cur.copy("copy (select id from t order by id) to stdout") as copy:
                rows = list(copy.rows())
        assert len(rows) == 56
    gateway.wait_records(disconnected())
    usage = gateway.usage()
    statements = [u["statement"] for u in usage]
    assert statements[0] == "create table t (id int primary key, v text)"
    prepared = [u for u in usage if u["statement"] == "insert into t values ($1, $2)"]
    assert len(prepared) == 5 and [u["outcome"] for u in prepared] == ["ok"] * 4 + ["error"]
    # hashed as sent (psycopg sends the int in binary, the str as text)
    assert prepared[1]["parameters"][1] == hashlib.sha256(b"secret-param-2").hexdigest()
    assert len(prepared[1]["parameters"]) == 2
    assert "error" not in prepared[4]          # a bound value could be echoed: message withheld
    assert prepared[4]["sqlstate"] == "23505"
    assert len([s for s in statements if s == "insert into t values ($1, 'p')"]) == 2
    assert [u["command_tag"] for u in usage if u["statement"].startswith("copy")] == ["COPY 50", "COPY 56"]
    assert [u["seq"] for u in usage] == list(range(1, len(usage) + 1))
    text = gateway.records_path.read_text()
    assert "secret-param" not in text


def test_psycopg_pipeline_error_skips_the_rest_of_the_batch(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        conn.execute("create table pe (a int)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.pipeline():
                conn.execute("insert into pe values (1)")
                conn.execute("select 1/0")
                conn.execute("insert into pe values (3)")
    gateway.wait_records(disconnected())
    usage = gateway.usage()
    assert [(u["statement"], u["outcome"]) for u in usage] == [
        ("create table pe (a int)", "ok"), ("insert into pe values (1)", "ok"), ("select 1/0", "error")]


def test_asyncpg_binary_extended_protocol(gateway):
    import asyncpg

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=gateway.port, user=CREDENTIAL,
                                     password=TOKEN, database="gwdb", ssl=False)
        try:
            assert await conn.fetchval("select $1::int + 1", 41) == 42
            stmt = await conn.prepare("select $1::bytea || $2::bytea")
            for i in range(3):
                assert await stmt.fetchval(bytes([i]), b"\x00\xff") == bytes([i]) + b"\x00\xff"
            await conn.execute("create table ap (a int); insert into ap select generate_series(1, 50)")
            async with conn.transaction():
                seen = [r["a"] async for r in conn.cursor("select a from ap order by a", prefetch=20)]
            assert seen == list(range(1, 51))
        finally:
            await conn.close()

    asyncio.run(run())
    gateway.wait_records(disconnected())
    usage = gateway.usage()
    concat = [u for u in usage if u["statement"] == "select $1::bytea || $2::bytea"]
    assert len(concat) == 3 and all(u["outcome"] in ("ok", "suspended") for u in concat)  # fetchval: limit 1
    assert concat[0]["parameters"][0] == hashlib.sha256(b"\x00").hexdigest()
    assert [u["statement"] for u in usage if "ap" in u["statement"]][:2] == [
        "create table ap (a int)", "insert into ap select generate_series(1, 50)"]
    cursor = [u for u in usage if u["statement"] == "select a from ap order by a"]
    assert [u["outcome"] for u in cursor] == ["suspended", "suspended", "ok"]
    assert cursor[1]["continues_seq"] == cursor[0]["seq"] and cursor[2]["command_tag"] == "SELECT 10"


def test_pgbench_init_select_and_prepared(gateway):
    base = ["-h", "127.0.0.1", "-p", str(gateway.port), "-U", CREDENTIAL, "gwdb"]
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", *base], env=_env(), check=True, capture_output=True)
    subprocess.run(["pgbench", "-n", "-S", "-t", "25", "-c", "2", *base], env=_env(), check=True,
                   capture_output=True)
    subprocess.run(["pgbench", "-n", "-S", "-M", "prepared", "-t", "25", *base], env=_env(), check=True,
                   capture_output=True)
    gateway.wait_records(lambda rs: sum(r["type"] == "usage" and "= $1" in r["statement"] for r in rs) >= 25
                         and sum(r["type"] == "connect" for r in rs) == sum(r["type"] == "disconnect" for r in rs))
    selects = [u for u in gateway.usage() if u["statement"].lstrip().startswith("SELECT abalance")]
    simple = [u for u in selects if "$1" not in u["statement"]]
    prepared = [u for u in selects if "$1" in u["statement"]]
    assert len(simple) == 50 and len(prepared) == 25
    assert all(u["command_tag"] == "SELECT 1" for u in selects)
    assert any(u["command_tag"].startswith("COPY") for u in gateway.usage())   # pgbench -i loads by COPY


def test_pg_dump_through_the_gateway(gateway):
    psql(gateway, "-c", "create table dumped (a int); insert into dumped values (7)")
    out = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-p", str(gateway.port), "-U", CREDENTIAL, "gwdb"],
                         env=_env(), capture_output=True, text=True, check=True, timeout=60)
    assert "CREATE TABLE public.dumped" in out.stdout and "\n7\n" in out.stdout
    gateway.wait_records(disconnected(2))
    assert any(u["statement"].startswith("COPY public.dumped") for u in gateway.usage())


def test_function_call_via_large_objects(gateway, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(3000))
    out = psql(gateway, "-c", f"\\lo_import '{blob}'")
    assert out.stdout.startswith("lo_import")
    gateway.wait_records(disconnected())
    calls = [u for u in gateway.usage() if u.get("kind") == "function_call"]
    assert calls and all(u["outcome"] == "ok" and u["command_tag"] == "FUNCTION CALL" for u in calls)


def test_cancel_request_is_mapped_and_recorded(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(10)")
        assert conn.execute("select 1").fetchone() == (1,)
    records = gateway.wait_records(lambda rs: any(r["type"] == "cancel" for r in rs) and disconnected()(rs))
    cancel = next(r for r in records if r["type"] == "cancel")
    assert cancel["credential_id"] == CREDENTIAL and cancel["forwarded"] is True
    sleep = next(u for u in gateway.usage() if u["statement"] == "select pg_sleep(10)")
    assert sleep["sqlstate"] == "57014"


def _fatal_reasons(conn: psycopg.Connection) -> list[str]:
    """Where libpq puts a FATAL: the error of the statement it answers, or, when it arrives
    while the connection is idle (read together with the previous answer), the notice
    processor (psql prints it from there) — then the error is only "server closed the
    connection unexpectedly". A real PostgreSQL's pg_terminate_backend behaves the same."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    return notices


def test_end_credential_closes_the_session_within_a_second(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        notices = _fatal_reasons(conn)
        conn.execute("select 1")
        start = time.monotonic()
        gateway.end_credential(CREDENTIAL, "revoked by test")
        with pytest.raises(psycopg.OperationalError) as info:
            while time.monotonic() - start < 5:
                conn.execute("select 1")
                time.sleep(0.05)
        assert time.monotonic() - start < 1.5
        assert "credential has been ended" in " ".join([str(info.value), *notices])
    records = gateway.wait_records(disconnected())
    disconnect = next(r for r in records if r["type"] == "disconnect")
    assert "revoked by test" in disconnect["reason"]


def test_what_a_client_sends_after_its_session_ended_is_not_recorded(gateway, gw_dsn):
    """After the FATAL the gateway keeps the socket open a moment (so the client reads it
    rather than a reset) and drops what arrives: no statement record for what never ran."""
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        notices = _fatal_reasons(conn)
        conn.execute("select 1")
        gateway.end_credential(CREDENTIAL, "revoked by test")
        gateway.wait_records(disconnected())
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 'after the end'")
        assert "credential has been ended" in " ".join([str(info.value), *notices])
    time.sleep(0.5)                     # anything recorded has been drained by now
    assert [u["statement"] for u in gateway.usage()] == ["select 1"]
    spooled = b"".join(f.read_bytes() for f in gateway.spool_dir.rglob("*") if f.is_file())
    assert b"select 1" in spooled and b"after the end" not in spooled   # not even spooled


def test_graceful_shutdown_lets_a_running_statement_finish(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        result = {}

        def run():
            result["row"] = conn.execute("select pg_sleep(1.0), 5").fetchone()

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        gateway.proc.send_signal(15)
        t.join(10)
        assert result["row"] == ("", 5) or result["row"][1] == 5
    gateway.proc.wait(20)
    sleep = next(u for u in gateway.usage() if u["statement"] == "select pg_sleep(1.0), 5")
    assert sleep["outcome"] == "ok"


def test_a_busy_client_reads_the_shutdown_reason_not_a_reset(gateway, gw_dsn):
    """A client sending statements back to back while the gateway shuts down gets the FATAL
    57P01 with its reason: the gateway lingers on the socket (reading and dropping what the
    client still sends) instead of closing it with unread bytes, which resets the connection
    and makes the client's kernel discard the FATAL."""
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        notices = _fatal_reasons(conn)
        failure: dict[str, BaseException] = {}

        def run():
            try:
                while True:
                    conn.execute("select 1")
            except psycopg.Error as exc:
                failure["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        gateway.proc.send_signal(15)
        t.join(10)
        assert not t.is_alive()
        error = failure["error"]
        reasons = " ".join([str(error), *notices])
        assert "the gateway is shutting down" in reasons, reasons
    gateway.proc.wait(20)
