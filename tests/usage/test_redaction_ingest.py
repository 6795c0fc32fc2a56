"""Redaction that cannot be dodged (issue 13), through log ingestion into a real ledger: a
statement with an unterminated quoted password, an unquoted password, a ``U&'…'`` literal, and an
error message that echoes such a statement never put the password into the ledger. The same
``broker.usage.redact`` code redacts for the gateway (tests/gateway/test_gw_units.py)."""
from __future__ import annotations

import json

import pytest

from broker.ledger import open_ledger
from broker.usage import ingest_postgres_log
from broker.usage.ingest import WITHHELD

CID = "01jdtestcred0000000000000b"
CASES = [
    ("unterminated quote", "ALTER ROLE app PASSWORD 'hunter2-open", "hunter2-open",
     'unterminated quoted string at or near "\'hunter2-open"'),
    ("unquoted", "ALTER ROLE app PASSWORD hunter2bare", "hunter2bare",
     'syntax error at or near "hunter2bare"'),
    ("unicode literal", "ALTER ROLE app PASSWORD U&'hunter\\0032uni'", "hunter", None),
    ("conninfo in U&", "SELECT dblink_connect(U&'host=db \\0070assword=hunter2u')", "hunter2u", None),
]


def _lines(statement: str, error: str | None, n: int) -> str:
    base = {"timestamp": "2026-03-01 10:00:00.000 UTC", "user": f"nhb_{CID}", "dbname": "p",
            "pid": 7, "session_id": f"s.{n}", "line_num": 1}
    if error is None:
        return json.dumps({**base, "error_severity": "LOG", "message": f"statement: {statement}"}) + "\n"
    return json.dumps({**base, "error_severity": "ERROR", "state_code": "42601", "message": error,
                       "statement": statement}) + "\n"


@pytest.mark.parametrize("case, statement, secret, error", CASES, ids=[c[0] for c in CASES])
def test_no_password_reaches_the_ledger(database_url, tmp_path, case, statement, secret, error):
    log = tmp_path / "postgresql.json"
    log.write_text(_lines(statement, error, 1))
    with open_ledger(database_url) as ledger:
        report = ingest_postgres_log(ledger, log)
        assert report.recorded == 1
        events = [e for e in ledger.iter_events() if e.type == "usage"]
        text = "".join(e.canonical_bytes().decode() for e in events)
        assert secret not in text, case
        assert "***" in events[0].details["statement"]
        if error is not None:
            assert events[0].details["error"] == WITHHELD
