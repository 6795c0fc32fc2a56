"""kill -9 under load: after a restart every statement the database executed through the gateway
has exactly one record (by line_key, as the ledger dedupes), and nothing recorded as done was not
done. The evidence of execution is the rows themselves: each INSERT carries a unique value."""
from __future__ import annotations

import os
import signal
import threading
import time

import psycopg

from tests.gateway.gw_support import CREDENTIAL, TOKEN, tokens, write_config
from tests.support.pg_cluster import free_port

PREFIX = "insert into crash_hits values ('"


def _load(port: int, stop: threading.Event, name: str, sent: list[str]) -> None:
    dsn = f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{port}/gwdb"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                value = f"{name}-{i}"
                sent.append(value)
                if i % 2:
                    conn.pgconn.exec_(f"{PREFIX}{value}')".encode())          # simple Query
                else:
                    conn.execute(f"{PREFIX}{value}')")                         # extended
                i += 1
    except (psycopg.OperationalError, psycopg.InterfaceError):
        pass


def _check(gw, cluster) -> dict[str, int]:
    with psycopg.connect(cluster.dsn("gwdb")) as admin:
        executed = {v for (v,) in admin.execute("select v from crash_hits")}
    deadline = time.monotonic() + 30
    while True:
        usage = [u for u in gw.usage() if u["statement"].startswith(PREFIX)]
        recorded: dict[str, list[dict]] = {}
        for u in usage:
            recorded.setdefault(u["statement"][len(PREFIX):-2], []).append(u)
        if executed <= set(recorded) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    missing = executed - set(recorded)
    assert not missing, f"{len(missing)} executed statements have no record"
    assert all(len(v) == 1 for v in recorded.values()), "a statement has two records"
    for value, (record,) in recorded.items():
        if record["outcome"] == "ok":
            assert value in executed and record["command_tag"] == "INSERT 0 1"
        else:
            assert record["outcome"] == "unknown"
    unknown = sum(1 for (r,) in recorded.values() if r["outcome"] == "unknown")
    return {"executed": len(executed), "recorded": len(recorded), "unknown": unknown}


def test_kill9_of_the_whole_gateway_under_load(cluster, tmp_path):
    with psycopg.connect(cluster.dsn("gwdb"), autocommit=True) as admin:
        admin.execute("drop table if exists crash_hits")
        admin.execute("create table crash_hits (v text primary key)")
        admin.execute("alter table crash_hits owner to gw_app")
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(), workers=2)
    gw.start()
    stop, sent = threading.Event(), list[str]()
    threads = [threading.Thread(target=_load, args=(gw.port, stop, f"t{n}", sent)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    gw.kill9()                                   # supervisor, drainer and workers: SIGKILL, all at once
    stop.set()
    for t in threads:
        t.join(10)
    assert len(sent) > 200
    assert list(gw.spool_dir.glob("*.spool")), "the crash left spool segments behind"
    gw.start()                                   # recovery drains what no live process holds
    try:
        counts = _check(gw, cluster)
        print("crash:", counts)
        assert counts["executed"] > 200 and counts["unknown"] <= 4
        disconnects = [r for r in gw.records() if r["type"] == "disconnect"]
        assert sum("crash" in r["reason"] for r in disconnects) >= 1
    finally:
        gw.stop()


def test_kill9_of_one_worker_is_recovered_while_the_gateway_runs(cluster, tmp_path):
    with psycopg.connect(cluster.dsn("gwdb"), autocommit=True) as admin:
        admin.execute("drop table if exists crash_hits")
        admin.execute("create table crash_hits (v text primary key)")
        admin.execute("alter table crash_hits owner to gw_app")
    gw = write_config(tmp_path, port=free_port(), upstream_port=cluster.port, tokens=tokens(), workers=1)
    gw.start()
    try:
        stop, sent = threading.Event(), list[str]()
        threads = [threading.Thread(target=_load, args=(gw.port, stop, f"w{n}", sent)) for n in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        pid = gw.proc.pid
        (worker,) = [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        os.kill(worker, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(10)
        counts = _check(gw, cluster)
        assert counts["executed"] > 50
        # the supervisor starts a new worker (with one worker the port is closed meanwhile)
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(f"postgresql://{CREDENTIAL}:{TOKEN}@127.0.0.1:{gw.port}/gwdb") as conn:
                    assert conn.execute("select 1").fetchone() == (1,)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        gw.stop()
