"""Schema version 10's projections (lineage closure, usage counts, statement fingerprints) give
the answers the pre-v10 queries gave, on both backends.

The reference answers below are the pre-v10 SQL itself (recursive walks of ``parent_id``,
``count(*)`` over usage events, a LIKE scan of every usage line), run on the same ledger: a
generated tree with a deep chain (deeper than the default depth bound), a wide fan-out,
issue-time ties, a run with credentials nested inside it, and usage written by both usage paths
(``record_usage`` with lines; ``append`` without). The backfill test turns a ledger back into
what a broker before version 10 left (the projections dropped, the migration unrecorded),
reopens it, and compares every answer with the ones it gave before.
"""
from __future__ import annotations

import random
import sqlite3
from typing import Any

import pytest

from broker.audit import views
from broker.audit.queries import AuditQueries, _ancestors_by_parent
from broker.ledger import EventDraft, Ledger, open_ledger, utc_timestamp
from broker.ledger.rows import CREDENTIAL_COLUMNS, EVENT_COLUMNS, credential_from_row, event_from_row
from tests.support.audit import AUTHORIZER, PRINCIPAL, mint, usage

STATEMENTS = ["UPDATE accounts SET balance = 0", "update Accounts set x = 1", "SELECT 1",
              "SELECT * FROM t WHERE name LIKE 'a%b_c'", "INSERT INTO h VALUES ('C:\\\\tmp')",
              "SELECT 'café' FROM menu", "DELETE FROM sessions"]
SEARCHES = ["update accounts", "UPDATE", "select", "%", "_", "\\", "a%b_c", "café", "CAFÉ", "é",
            "nothing like this", "t", "'"]


def _columns(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c.strip()}" for c in CREDENTIAL_COLUMNS.split(","))


def old_descendants(ledger: Ledger, roots: list[str], max_depth: int, limit: int
                    ) -> tuple[list[tuple[str, int]], bool, bool]:
    """The pre-v10 walk: a recursive CTE down ``parent_id`` from every root at once."""
    rows = ledger.read(
        "WITH RECURSIVE down(credential_id, depth) AS ("
        " SELECT credential_id, 1 FROM credentials"
        f" WHERE parent_id IN ({', '.join(['%s'] * len(roots))})"
        " UNION ALL"
        " SELECT c.credential_id, down.depth + 1 FROM credentials c"
        " JOIN down ON c.parent_id = down.credential_id WHERE down.depth <= %s)"
        f" SELECT {_columns('c')}, down.depth FROM down"
        " JOIN credentials c ON c.credential_id = down.credential_id"
        " ORDER BY down.depth, c.issued_at, c.credential_id", (*roots, max_depth))
    nodes: list[tuple[str, int]] = []
    seen = set(roots)
    truncated = deeper = False
    for row in rows:
        record, depth = credential_from_row(row[:-1]), int(row[-1])
        if depth > max_depth:
            deeper = True
            break
        if record.credential_id in seen:
            continue
        if len(nodes) == limit:
            truncated = True
            break
        seen.add(record.credential_id)
        nodes.append((record.credential_id, depth))
    return nodes, truncated, deeper


def old_usage_count(ledger: Ledger, cid: str) -> int:
    return int(ledger.read("SELECT count(*) FROM events WHERE type = 'usage' AND credential_id = %s",
                           (cid,))[0][0])


def old_find_usage(ledger: Ledger, *, statement: str | None = None, since: str | None = None,
                   until: str | None = None, after_seq: int = 0, limit: int = 100) -> list[int]:
    """The pre-v10 "who ran this": one scan of the usage lines in seq order."""
    where: list[str] = ["u.seq > %s", "e.type = 'usage'"]
    params: list[Any] = [after_seq]
    if statement:
        escaped = statement.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("lower(u.statement) LIKE %s ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if since is not None:
        where.append("u.at >= %s")
        params.append(since)
    if until is not None:
        where.append("u.at < %s")
        params.append(until)
    columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
    rows = ledger.read(f"SELECT {columns} FROM usage_lines u JOIN events e ON e.seq = u.seq"
                       f" WHERE {' AND '.join(where)} ORDER BY u.seq LIMIT %s", [*params, limit])
    return [event_from_row(r).seq for r in rows]


def build_forest(ledger: Ledger, seed: int = 14) -> dict[str, Any]:
    """A deep and wide tree under ``root`` (run-A), plus run-B: two roots, one nested in the
    other's tree, and credentials of the run below credentials of the run."""
    rng = random.Random(seed)
    now = 1_800_000_000
    run_a = {"id": "run-A", "attempt": 1}
    root = mint(ledger, run=run_a, issued_at=now)
    chain = [root]
    for depth in range(20):                                  # deeper than the default bound (16)
        chain.append(mint(ledger, parent=chain[-1], run=run_a, issued_at=now + depth + 1))
    wide = [mint(ledger, parent=root, run=run_a, issued_at=now + rng.randrange(3))  # ties
            for _ in range(25)]
    grand = [mint(ledger, parent=parent, run=run_a, issued_at=now + 5)
             for parent in wide[:5] for _ in range(6)]
    great = [mint(ledger, parent=parent, run=run_a, issued_at=now + 6) for parent in grand[::4]]
    run_b = {"id": "run-B", "attempt": 1}
    b1 = mint(ledger, run=run_b, issued_at=now)
    b1_kids = [mint(ledger, parent=b1, run={"id": "other"}, issued_at=now + 1) for _ in range(4)]
    b2 = mint(ledger, parent=b1_kids[0], run=run_b, issued_at=now + 2)     # in the run, nested
    b2_kids = [mint(ledger, parent=b2, run={"id": "other"}, issued_at=now + 3) for _ in range(3)]
    everyone = [*chain, *wide, *grand, *great, b1, *b1_kids, b2, *b2_kids]
    for i in range(160):
        cid = rng.choice(everyone[:40] + [root] * 20)
        usage(ledger, cid, rng.choice(STATEMENTS) + ("" if i % 7 else f" -- {i}"))
    for cid in rng.sample(everyone, 10):                     # usage without a line (oauth's path)
        ledger.append(EventDraft(type="usage", credential_id=cid, principal=PRINCIPAL,
                                 authorizer=AUTHORIZER, details={"client": "api"}))
    at = utc_timestamp()                                     # a keyed non-usage event with text
    ledger.record_usage([(EventDraft(type="connect", credential_id=root, principal=PRINCIPAL,
                                     details={"result": "accepted"}), "test:connect:1", at,
                          "UPDATE accounts SET balance = 0")])
    ledger.record_revoke(wide[3], EventDraft(type="revoke", credential_id=wide[3], parent_id=root,
                                             principal=PRINCIPAL, details={"result": "revoked"}),
                         revoked_at=now + 100)
    return {"root": root, "chain": chain, "wide": wide, "grand": grand, "b1": b1, "b2": b2,
            "everyone": everyone}


def answers(ledger: Ledger, forest: dict[str, Any]) -> dict[str, Any]:
    """Every answer the projections serve, as plain data (compared before/after the backfill)."""
    queries = AuditQueries(ledger)
    out: dict[str, Any] = {}
    for cid in forest["everyone"][::3] + [forest["root"], forest["chain"][-1]]:
        for depth, limit in ((16, 1000), (32, 1000), (2, 7), (1, 25), (3, 30)):
            result = queries.lineage(cid, max_depth=depth, limit=limit, usage_limit=3)
            assert result is not None
            out[f"lineage {cid} {depth} {limit}"] = (
                [r.credential_id for r in result.ancestors],
                [(r.credential_id, d) for r, d in result.descendants],
                result.descendants_truncated, result.depth_reached,
                {k: (v.count, [e.seq for e in v.first]) for k, v in result.usage.items()})
    for run in ("run-A", "run-B"):
        ran = queries.run_lineage(run, max_depth=16, limit=1000)
        out[f"run {run}"] = ([c.credential_id for c in ran.credentials],
                             [(r.credential_id, d) for r, d in ran.descendants],
                             ran.descendants_truncated, {k: v.count for k, v in ran.usage.items()})
    seqs = [r[0] for r in ledger.read("SELECT seq FROM usage_lines ORDER BY seq", ())]
    middle = seqs[len(seqs) // 2]
    ats = sorted(r[0] for r in ledger.read("SELECT at FROM usage_lines", ()))
    for text in SEARCHES + [None]:
        for kwargs in ({}, {"limit": 3}, {"after_seq": middle, "limit": 5},
                       {"since": ats[10], "until": ats[-10]}, {"since": ats[-1]}):
            found = ledger.find_usage(statement=text, **kwargs)
            out[f"who {text!r} {kwargs}"] = [e.seq for e in found]
    return out


def test_projection_answers_equal_the_recursive_and_scanning_queries(ledger):
    forest = build_forest(ledger)
    queries = AuditQueries(ledger)
    for cid in forest["everyone"]:
        result = queries.lineage(cid, max_depth=32, limit=10_000, usage_limit=0)
        assert result is not None
        walked = _ancestors_by_parent(ledger.read, cid, 32)
        assert [r.credential_id for r in [result.credential, *result.ancestors]] == \
            [r.credential_id for r in walked]
        for depth, limit in ((32, 10_000), (16, 1000), (3, 10), (1, 5), (2, 1)):
            new = queries.lineage(cid, max_depth=depth, limit=limit, usage_limit=0)
            assert new is not None
            assert ([(r.credential_id, d) for r, d in new.descendants],
                    new.descendants_truncated, new.depth_reached) == \
                old_descendants(ledger, [cid], depth, limit), (cid, depth, limit)
        for node, summary in result.usage.items():
            assert summary.count == old_usage_count(ledger, node)
    deep = queries.lineage(forest["root"], max_depth=16)
    assert deep is not None and deep.depth_reached and len(deep.descendants) > 50
    leaf = queries.lineage(forest["chain"][-1])
    assert leaf is not None and len(leaf.ancestors) == 20

    for run, roots in (("run-A", None), ("run-B", [forest["b1"], forest["b2"]])):
        ran = queries.run_lineage(run, max_depth=16, limit=1000)
        ids = roots or [c.credential_id for c in ran.credentials]
        assert sorted(c.credential_id for c in ran.credentials) == sorted(ids)
        in_run = {c.credential_id for c in ran.credentials}
        old, truncated, _ = old_descendants(ledger, [c.credential_id for c in ran.credentials],
                                            16, 1000)
        assert [(r.credential_id, d) for r, d in ran.descendants] == \
            [(c, d) for c, d in old if c not in in_run]
        assert ran.descendants_truncated == truncated

    seqs = [r[0] for r in ledger.read("SELECT seq FROM usage_lines ORDER BY seq", ())]
    ats = sorted(r[0] for r in ledger.read("SELECT at FROM usage_lines", ()))
    for text in SEARCHES + [None, ""]:
        for kwargs in ({}, {"limit": 1}, {"limit": 3}, {"after_seq": seqs[len(seqs) // 3]},
                       {"since": ats[20], "until": ats[-20]}, {"until": ats[5]},
                       {"since": ats[-1], "limit": 1000}):
            assert [e.seq for e in ledger.find_usage(statement=text, **kwargs)] == \
                old_find_usage(ledger, statement=text, **kwargs), (text, kwargs)
    assert ledger.find_usage(statement="update accounts")            # the searches do find
    assert all(e.type == "usage" for e in ledger.find_usage(statement="UPDATE", limit=1000))


def test_many_matching_statements_fall_back_to_one_scan(ledger, monkeypatch):
    import broker.ledger.store as store

    cid = mint(ledger)
    for i in range(12):
        usage(ledger, cid, f"SELECT {i} FROM inline_literals")
    expected = old_find_usage(ledger, statement="inline_literals", limit=5)
    monkeypatch.setattr(store, "_MAX_FINGERPRINTS", 4)        # 12 distinct statements > 4
    assert [e.seq for e in ledger.find_usage(statement="inline_literals", limit=5)] == expected
    monkeypatch.setattr(store, "_MAX_FINGERPRINTS", 500)
    assert [e.seq for e in ledger.find_usage(statement="inline_literals", limit=5)] == expected


def _back_to_version_9(url: str) -> None:
    """What a broker before schema version 10 left: no projection tables, no fingerprint
    column, version 10 not recorded (its rows of events, credentials and usage lines are the
    same: version 10 only added the projections' writes)."""
    statements = ["DROP INDEX usage_lines_fingerprint_idx", "ALTER TABLE usage_lines DROP COLUMN fingerprint",
                  "DROP TABLE credential_lineage", "DROP TABLE usage_counts",
                  "DROP TABLE usage_statements", "DELETE FROM schema_version WHERE version = 10"]
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            for sql in statements:
                conn.execute(sql)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        for sql in statements:
            pg.execute(sql)


def test_migration_10_backfills_a_ledger_written_before_it(database_url):
    with open_ledger(database_url) as ledger:
        forest = build_forest(ledger)
        before = answers(ledger, forest)
        body = views.lineage_view(ledger, forest["root"], now=1_800_000_050)
        run = views.run_view(ledger, "run-B", now=1_800_000_050)
    _back_to_version_9(database_url)
    with open_ledger(database_url) as ledger:            # migration 10 runs: the backfill
        versions = {int(r[0]) for r in ledger.read("SELECT version FROM schema_version", ())}
        assert 10 in versions
        assert answers(ledger, forest) == before
        assert views.lineage_view(ledger, forest["root"], now=1_800_000_050) == body
        assert views.run_view(ledger, "run-B", now=1_800_000_050) == run
        # and the append path keeps them up to date from there
        child = mint(ledger, parent=forest["chain"][-1])
        usage(ledger, child, "VACUUM après")
        result = AuditQueries(ledger).lineage(forest["chain"][-2], max_depth=32)
        assert result is not None and result.descendants[-1][0].credential_id == child
        assert result.usage[child].count == 1
        assert [e.credential_id for e in ledger.find_usage(statement="VACUUM apr")] == [child]


@pytest.mark.parametrize("depth", [1, 5])
def test_a_credential_row_written_behind_the_append_path_is_still_answered(ledger, depth):
    """No closure rows (a row inserted with SQL, not record_mint): the walk up parent_id."""
    from broker.ledger.events import CredentialRecord
    from broker.ledger.rows import SQL_INSERT_CREDENTIAL, credential_params

    parent = mint(ledger)
    for _ in range(depth - 1):
        parent = mint(ledger, parent=parent)
    record = CredentialRecord(credential_id="01" + "e" * 24, parent_id=parent, principal=PRINCIPAL,
                              run={}, authorizer=AUTHORIZER, target="t", target_type="jwt",
                              scope="", issued_at=1, expires_at=2)
    with ledger.transaction() as tx:
        tx.execute(SQL_INSERT_CREDENTIAL, credential_params(record))
    result = AuditQueries(ledger).lineage(record.credential_id)
    assert result is not None and len(result.ancestors) == depth
