"""The ledger's audit queries (broker/audit/queries.py) and schema version 5, both backends."""
from __future__ import annotations

import pytest

from broker.audit.client import LocalSource, iter_events
from broker.audit.ocsf import to_ocsf
from broker.audit.params import decode_cursor, encode_cursor, parse_instant
from broker.audit.queries import AuditQueries
from broker.ledger import Event
from broker.ledger.schema import LATEST_VERSION
from tests.support.audit import PRINCIPAL, build_story, deny, mint, usage


def test_schema_version_5_indexes_exist(ledger, database_url):
    names = {"events_credential_type_seq_idx", "events_principal_seq_idx",
             "events_principal_type_seq_idx", "events_type_seq_idx",
             "credentials_principal_issued_idx"}
    if database_url.startswith("sqlite"):
        rows = ledger.read("SELECT name FROM sqlite_master WHERE type = 'index'", ())
    else:
        rows = ledger.read("SELECT indexname FROM pg_indexes", ())
    assert names <= {r[0] for r in rows}
    versions = {int(r[0]) for r in ledger.read("SELECT version FROM schema_version", ())}
    assert 5 in versions and LATEST_VERSION >= 5


def test_descendants_are_bounded_by_depth_and_limit(ledger):
    root = mint(ledger)
    level = [root]
    for _ in range(5):                                 # a chain of 5 levels, 2 wide at each
        level = [mint(ledger, parent=level[0]) for _ in range(2)]
    full = AuditQueries(ledger).lineage(root, max_depth=32)
    assert [d for _, d in full.descendants] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    cut = AuditQueries(ledger).lineage(root, max_depth=2)
    assert [d for _, d in cut.descendants] == [1, 1, 2, 2] and cut.depth_reached
    few = AuditQueries(ledger).lineage(root, limit=3)
    assert len(few.descendants) == 3 and few.descendants_truncated
    exact = AuditQueries(ledger).lineage(root, limit=10)
    assert len(exact.descendants) == 10 and not exact.descendants_truncated
    leaf = AuditQueries(ledger).lineage(level[0])
    assert [r.credential_id for r in leaf.ancestors][-1] == root and len(leaf.ancestors) == 5


def test_a_parent_cycle_written_behind_the_broker_does_not_loop(ledger):
    a = mint(ledger)
    b = mint(ledger, parent=a)
    # The broker never writes a cycle; a tamperer might. Both walks stay bounded.
    _raw(ledger, "UPDATE credentials SET parent_id = %s WHERE credential_id = %s", (b, a))
    result = AuditQueries(ledger).lineage(a)
    assert [r.credential_id for r, _ in result.descendants] == [b]
    assert [r.credential_id for r in result.ancestors] == [b]


def test_usage_pages_are_per_credential_and_bounded(ledger):
    a, b = mint(ledger), mint(ledger)
    seqs_a = [usage(ledger, a, f"SELECT {i}") for i in range(7)]
    seqs_b = [usage(ledger, b, f"UPDATE t SET x = {i}") for i in range(3)]
    summary = AuditQueries(ledger).usage_summary([a, b, "01aaaaaaaaaaaaaaaaaaaaaaaa"], usage_limit=4)
    assert summary[a].count == 7 and [e.seq for e in summary[a].first] == seqs_a[:4]
    assert summary[b].count == 3 and [e.seq for e in summary[b].first] == seqs_b
    assert summary["01aaaaaaaaaaaaaaaaaaaaaaaa"].count == 0


def test_search_events_window_and_filters(ledger):
    story = build_story(ledger)
    events = list(ledger.iter_events())
    middle = events[len(events) // 2]
    after = ledger.search_events(since=middle.ts, limit=1000)
    before = ledger.search_events(until=middle.ts, limit=1000)
    assert [e.seq for e in before + after] == [e.seq for e in events]
    assert [e.seq for e in ledger.search_events(type="usage", credential_id=story.root,
                                                after_seq=story.root_usage[2], limit=2)] \
        == story.root_usage[3:5]
    assert {e.type for e in ledger.search_events(principal=PRINCIPAL, type="deny")} == {"deny"}
    assert ledger.search_events(run_id="run-1", type="deny")[0].run["attempt"] == 3


def test_iter_events_follows_cursors(ledger):
    for i in range(23):
        deny(ledger, principal=f"p{i}")
    source = LocalSource.__new__(LocalSource)
    source.ledger = ledger
    filters = {"type": "deny", "principal": None, "credential_id": None, "since": None, "until": None}
    seen = [e["seq"] for e in iter_events(source, filters, page=5)]
    assert seen == list(range(1, 24))


def test_cursors_are_opaque_and_bound_to_their_filters():
    cursor = encode_cursor(42, {"type": "usage"})
    assert decode_cursor(cursor, {"type": "usage", "principal": None}) == 42
    with pytest.raises(ValueError):
        decode_cursor(cursor, {"type": "mint"})
    for bad in ("", "!!!", "e30", "x" * 300):
        with pytest.raises(ValueError):
            decode_cursor(bad, {})


@pytest.mark.parametrize("text,expected", [
    ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00.000000Z"),
    ("2026-03-01T12:00:00+02:00", "2026-03-01T10:00:00.000000Z"),
    ("2026-03-01T10:00:00.123456789Z", "2026-03-01T10:00:00.123456Z"),
    ("2026-03-01", "2026-03-01T00:00:00.000000Z"),
    ("1772359200", "2026-03-01T10:00:00.000000Z"),
])
def test_parse_instant(text, expected):
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["", "now", "24h", "2026-03-01T10:00:00", "2026-02-30",
                                  "1969-12-31T00:00:00Z", "2026-03-01T10:00:00+0200"])
def test_parse_instant_refuses(text):
    with pytest.raises(ValueError):
        parse_instant(text)


def test_parse_instant_relative_only_when_asked():
    assert parse_instant("1h", now=1772359200, relative=True) == "2026-03-01T09:00:00.000000Z"


def _event(type_: str, **details) -> Event:
    return Event(seq=7, ts="2026-03-01T10:00:00.250000Z", type=type_, credential_id="01aaaaaaaaaaaaaaaaaaaaaaaa",
                 parent_id=None, principal=PRINCIPAL, run={"id": "r1", "attempt": 2},
                 authorizer={"type": "policy", "name": "p", "digest": "sha256:00"}, target="orders-db",
                 details=details, prev_hash="0" * 64, hash="f" * 64)


@pytest.mark.parametrize("type_,details,class_uid,activity_id,status_id", [
    ("mint", {"issuer": "gha", "expires_at": 1772359800}, 3002, 1, 1),
    ("deny", {"error": "invalid_grant", "reason": "expired"}, 3002, 1, 2),
    ("expire", {}, 3002, 2, 1),
    ("usage", {"statement": "UPDATE a SET b = 1", "command_tag": "UPDATE", "database": "orders",
               "client": "10.0.0.7(5432)"}, 6005, 2, 1),
    ("usage", {"statement": "SELECT 1", "command_tag": "SELECT", "database": "orders"}, 6005, 4, 1),
    ("usage", {"statement": "VACUUM", "command_tag": "VACUUM", "database": "orders"}, 6005, 99, 1),
    ("usage", {"source": "introspect", "client": "api-gw"}, 6003, 99, 1),
    ("introspect", {"client": "api-gw", "active": True}, 6003, 2, 1),
    ("revoke", {"client": "ops", "result": "revoked"}, 6003, 4, 1),
    ("approved", {"approver": "alice"}, 6003, 99, 1),
])
def test_ocsf_mapping(type_, details, class_uid, activity_id, status_id):
    record = to_ocsf(_event(type_, **details))
    assert (record["class_uid"], record["activity_id"], record["status_id"]) == (class_uid, activity_id, status_id)
    assert record["type_uid"] == class_uid * 100 + activity_id
    assert record["category_uid"] == class_uid // 1000
    assert record["time"] == 1772359200250 and record["severity_id"] in (1, 2)
    assert record["metadata"]["version"] == "1.1.0" and record["metadata"]["uid"] == "f" * 64
    assert record["metadata"]["product"]["name"] == "nhi-broker"
    assert record["metadata"]["correlation_uid"] == "r1"
    assert record["unmapped"]["ledger"]["hash"] == "f" * 64
    if class_uid == 3002:
        assert record["user"]["name"] == PRINCIPAL and record["service"]["name"] == "orders-db"
    if class_uid == 6003:
        assert record["api"]["operation"] and record["actor"] and record["src_endpoint"]
    if class_uid == 6005:
        assert record["database"]["name"] == "orders" and record["query_info"]["query_string"]
        assert record["actor"]["session"]["credential_uid"] == "01aaaaaaaaaaaaaaaaaaaaaaaa"


def test_ocsf_usage_endpoint_is_parsed():
    record = to_ocsf(_event("usage", statement="SELECT 1", command_tag="SELECT", database="d",
                            client="10.0.0.7(5432)"))
    assert record["src_endpoint"] == {"ip": "10.0.0.7", "port": 5432}
    assert to_ocsf(_event("usage", statement="x", database="d", client="[local]"))["src_endpoint"] \
        == {"name": "[local]"}


def _raw(ledger, sql, params):
    """A write behind the ledger's back (what a tamperer with database access could do)."""
    if hasattr(ledger, "path"):
        import sqlite3

        with sqlite3.connect(ledger.path) as conn:
            conn.execute(sql.replace("%s", "?"), params)
        return
    with ledger._pool.connection() as conn:
        conn.execute(sql, params)
