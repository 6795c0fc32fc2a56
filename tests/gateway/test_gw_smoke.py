from __future__ import annotations

import psycopg


def test_simple_query_records_one_usage(gateway, gw_dsn):
    with psycopg.connect(gw_dsn, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    records = gateway.wait_records(lambda rs: any(r["type"] == "disconnect" for r in rs))
    usage = gateway.usage()
    assert [u["statement"] for u in usage] == ["select 1"]
    assert usage[0]["command_tag"] == "SELECT 1" and usage[0]["rows"] == 1
