"""Log parsing and redaction on their own: lines as PostgreSQL writes them."""
from __future__ import annotations

from typing import Any

import pytest

from broker.usage import activity_of, parse_lines, redact_sql
from broker.usage.pglog import prefix_regex, utc_time

ROLE = "nhb_01jdtestcred0000000000000a"   # a valid credential id


@pytest.mark.parametrize("statement, expected", [
    ("ALTER ROLE x PASSWORD 'hunter2'", "ALTER ROLE x PASSWORD '***'"),
    ("alter user x with encrypted password 'it''s'", "alter user x with encrypted password '***'"),
    ("CREATE USER x PASSWORD E'a\\'b' LOGIN", "CREATE USER x PASSWORD '***' LOGIN"),
    ("CREATE ROLE x PASSWORD $$dollar$$", "CREATE ROLE x PASSWORD '***'"),
    ("CREATE ROLE x PASSWORD $t$tagged$t$ VALID UNTIL 'infinity'", "CREATE ROLE x PASSWORD '***' VALID UNTIL 'infinity'"),
    ("ALTER USER x PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy'", "ALTER USER x PASSWORD '***'"),
    ("CREATE USER MAPPING FOR x SERVER s OPTIONS (user 'u', password 'pw')",
     "CREATE USER MAPPING FOR x SERVER s OPTIONS (user 'u', password '***')"),
    ("SELECT dblink_connect('host=h dbname=d password=s3cret user=u')",
     "SELECT dblink_connect('host=h dbname=d password=*** user=u')"),
    ("SELECT 'postgresql://app:s3cret@db/x'", "SELECT 'postgresql://app:***@db/x'"),
    ("UPDATE accounts SET balance = 0", "UPDATE accounts SET balance = 0"),
    ("ALTER ROLE x PASSWORD NULL", "ALTER ROLE x PASSWORD NULL"),
], ids=["alter role", "encrypted + quote", "E-string", "dollar", "tagged dollar", "scram verifier (\\password)",
        "user mapping", "conninfo", "uri", "no secret", "null password"])
def test_redaction(statement, expected):
    assert redact_sql(statement) == expected


@pytest.mark.parametrize("logged, expected", [
    ("2026-03-01 10:00:00.123 UTC", "2026-03-01T10:00:00.123000Z"),
    ("2026-03-01 10:00:00 UTC", "2026-03-01T10:00:00.000000Z"),
    ("2026-03-01 12:00:00.5 +02", "2026-03-01T10:00:00.500000Z"),
    ("2026-03-01 05:30:00.000 -0430", "2026-03-01T10:00:00.000000Z"),
    ("garbage", None),
])
def test_log_times_become_utc(logged, expected):
    assert utc_time(logged) == expected


JSON_LINES = [
    '{"timestamp":"2026-03-01 10:00:00.001 UTC","user":"postgres","dbname":"p","pid":1,"session_id":"a.1","line_num":1,"error_severity":"LOG","message":"statement: SELECT 1"}\n',
    '{"timestamp":"2026-03-01 10:00:00.002 UTC","user":"%s","dbname":"p","pid":2,"remote_host":"10.0.0.5","remote_port":4242,"session_id":"a.2","line_num":4,"ps":"UPDATE","error_severity":"LOG","message":"execute <unnamed>: UPDATE t SET a = $1","detail":"parameters: $1 = \'x\'"}\n' % ROLE,
    '{"timestamp":"2026-03-01 10:00:00.003 UTC","user":"%s","dbname":"p","pid":2,"session_id":"a.2","line_num":5,"ps":"idle","error_severity":"LOG","message":"duration: 0.250 ms  statement: DELETE FROM t"}\n' % ROLE,
    '{"timestamp":"2026-03-01 10:00:00.004 UTC","user":"%s","dbname":"p","pid":2,"session_id":"a.2","line_num":6,"ps":"SELECT","error_severity":"ERROR","state_code":"42P01","message":"relation \\"nope\\" does not exist","statement":"SELECT * FROM nope"}\n' % ROLE,
    '{"timestamp":"2026-03-01 10:00:00.005 UTC","user":"%s","dbname":"p","pid":2,"session_id":"a.2","line_num":7,"error_severity":"LOG","message":"duration: 0.010 ms  parse <unnamed>: SELECT 1"}\n' % ROLE,
    '{"timestamp":"2026-03-01 10:00:00.006 UTC","user":"%s","dbname":"p","pid":2,"session_id":"a.2","line_num":8,"error_severity":"LOG","message":"AUDIT: SESSION,1,1,WRITE,UPDATE,,,\\"UPDATE t SET a = 1\\",<not logged>"}\n' % ROLE,
]


def test_jsonlog_keeps_minted_roles_and_reads_what_they_did():
    entries = list(parse_lines(JSON_LINES, "jsonlog"))
    assert [e.line_num for e in entries] == [4, 5, 6, 7, 8]
    activities = [activity_of(e) for e in entries]
    assert activities[0].statement == "UPDATE t SET a = $1" and activities[0].command_tag == "UPDATE"
    assert entries[0].client == "10.0.0.5:4242"
    assert (activities[1].statement, activities[1].duration_ms, activities[1].command_tag) == ("DELETE FROM t", 0.25, None)
    assert (activities[2].kind, activities[2].statement) == ("error", "SELECT * FROM nope")
    assert activities[3] is None                       # a parse step is not a statement
    assert (activities[4].statement, activities[4].command_tag) == ("UPDATE t SET a = 1", "UPDATE")


def test_csvlog_records_may_span_lines():
    lines = [
        f'2026-03-01 10:00:00.002 UTC,"{ROLE}","p",2,"127.0.0.1:5000",a.2,9,"idle",2026-03-01 10:00:00 UTC,3/1,0,LOG,00000,"statement: UPDATE t SET a = \'multi\n',
        'line "" quoted\'",,,,,,,,,"psql","client backend",,0\n',
        '2026-03-01 10:00:00.003 UTC,"postgres","p",3,,a.3,1,"idle",,,0,LOG,00000,"statement: SELECT 1",,,,,,,,,"","client backend",,0\n',
    ]
    entries = list(parse_lines(lines, "csvlog"))
    assert len(entries) == 1
    assert activity_of(entries[0]).statement == "UPDATE t SET a = 'multi\nline \" quoted'"
    assert (entries[0].session_id, entries[0].line_num, entries[0].application) == ("a.2", 9, "psql")


def test_stderr_with_a_prefix_attaches_continuations_and_statement_lines():
    prefix = "%m [%p] %q%u@%d %r %c %l "
    lines = [
        "2026-03-01 10:00:00.001 UTC [7] LOG:  checkpoint starting: time\n",
        f"2026-03-01 10:00:00.002 UTC [8] {ROLE}@payments 10.1.1.1(5432) a.8 3 LOG:  statement: UPDATE t\n",
        "\tSET a = 1\n",
        f"2026-03-01 10:00:00.003 UTC [8] {ROLE}@payments 10.1.1.1(5432) a.8 4 ERROR:  permission denied for table t\n",
        f"2026-03-01 10:00:00.003 UTC [8] {ROLE}@payments 10.1.1.1(5432) a.8 5 STATEMENT:  DELETE FROM t\n",
    ]
    entries = list(parse_lines(lines, "stderr", prefix=prefix))
    assert [activity_of(e).kind for e in entries] == ["statement", "error"]
    assert activity_of(entries[0]).statement == "UPDATE t\nSET a = 1"
    assert (entries[0].database, entries[0].client, entries[0].session_id, entries[0].line_num) == \
        ("payments", "10.1.1.1:5432", "a.8", 3)
    assert activity_of(entries[1]).statement == "DELETE FROM t"


@pytest.mark.parametrize("prefix, message", [
    ("%m [%p] ", "must contain %u"),
    ("%m %Z %u ", "unknown escape %Z"),
    ("%u %", "lone %"),
])
def test_prefixes_that_cannot_work_are_refused(prefix, message):
    with pytest.raises(ValueError, match=message):
        prefix_regex(prefix)


def _json_line(n: int, session: str = "f.1") -> str:
    return ('{"timestamp":"2026-03-01 10:00:00.%03d UTC","user":"%s","dbname":"p","pid":2,'
            '"session_id":"%s","line_num":%d,"error_severity":"LOG","message":"statement: SELECT %d"}\n'
            % (n % 1000, ROLE, session, n, n))


@pytest.mark.parametrize("rotation", ["rename", "truncate"])
def test_follow_tails_a_file_across_rotation_and_records_each_line_once(tmp_path, rotation):
    import os
    import threading
    import time

    from broker.ledger import open_ledger
    from broker.usage import ingest_postgres_log

    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    log = tmp_path / "postgresql.json"
    log.write_text("".join(_json_line(n) for n in range(1, 4)))
    stop = threading.Event()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(stats=ingest_postgres_log(
        ledger, log, follow=True, poll=0.05, should_stop=stop.is_set)))
    thread.start()

    def recorded() -> int:
        return sum(1 for e in ledger.iter_events() if e.type == "usage")

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 10
        while recorded() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recorded() == n

    wait_for(3)
    with open(log, "a") as f:                      # a line written in two pieces
        f.write(_json_line(4)[:30])
        f.flush()
        time.sleep(0.2)
        f.write(_json_line(4)[30:])
    wait_for(4)
    if rotation == "rename":
        os.rename(log, tmp_path / "postgresql.json.1")
        log.write_text(_json_line(1, "f.2") + _json_line(2, "f.2"))
    else:
        log.write_text(_json_line(1, "f.3"))       # truncated and rewritten, smaller than before
    wait_for(6 if rotation == "rename" else 5)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    again = ingest_postgres_log(ledger, tmp_path / "postgresql.json.1") if rotation == "rename" else None
    assert again is None or again.recorded == 0
    ledger.close()
