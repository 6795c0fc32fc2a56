"""The ledger store's API on both backends: appends, atomic credential writes, queries."""
from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from broker.common.ids import new_credential_id
from broker.ledger import GENESIS_HASH, CredentialRecord, EventDraft, Ledger, LedgerUnavailable, open_ledger
from broker.ledger.schema import LATEST_VERSION, MIGRATIONS

NOW = 1_900_000_000


def credential(*, credential_id: str | None = None, parent_id: str | None = None,
               principal: str = "github:acme/app:ref:refs/heads/main",
               run: dict[str, Any] | None = None, target: str = "orders-db",
               issued_at: int = NOW, expires_at: int = NOW + 900) -> CredentialRecord:
    return CredentialRecord(
        credential_id=credential_id or new_credential_id(), parent_id=parent_id,
        principal=principal, run=run if run is not None else {"id": "4242", "attempt": 1},
        authorizer={"policy": "deploy", "digest": "sha256:ab12"}, target=target,
        target_type="postgres", scope="read", issued_at=issued_at, expires_at=expires_at,
        issuer="github-actions", details={"role": "nhb_x"})


def mint_draft(record: CredentialRecord) -> EventDraft:
    return EventDraft(type="mint", credential_id=record.credential_id, parent_id=record.parent_id,
                      principal=record.principal, run=record.run, authorizer=record.authorizer,
                      target=record.target, details={"ttl": record.expires_at - record.issued_at})


def mint(ledger: Ledger, **kwargs: Any) -> CredentialRecord:
    record = credential(**kwargs)
    ledger.record_mint(mint_draft(record), record)
    return record


# -- appends ---------------------------------------------------------------------------------

def test_empty_ledger(ledger: Ledger) -> None:
    assert ledger.head() == (0, GENESIS_HASH)
    assert ledger.count() == 0
    assert list(ledger.iter_events()) == []
    report = ledger.verify()
    assert report.ok and report.count == 0


def test_append_assigns_contiguous_seq_and_links_hashes(ledger: Ledger) -> None:
    events = [ledger.append(EventDraft(type="deny", principal=f"p{i}", details={"i": i}))
              for i in range(5)]

    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
        assert after.ts >= before.ts
    assert all(e.hash == e.computed_hash() for e in events)
    assert ledger.head() == (5, events[-1].hash)
    assert ledger.count() == 5
    assert list(ledger.iter_events()) == events     # what was stored is what was returned


def test_json_columns_round_trip_exactly(ledger: Ledger) -> None:
    draft = EventDraft(
        type="usage", credential_id=new_credential_id(), principal="k8s:prod:ns/sa:ünïcode",
        run={"id": 9_007_199_254_740_993, "steps": ["a", "b"], "nested": {"z": 1, "a": None}},
        authorizer={"approver": "alice@example.com", "approval_id": "apr-1"},
        target="orders-db",
        details={"sql": "SELECT 1 -- \"quoted\" \\ and \u2028", "n": -3, "empty": {}, "t": True})
    event = ledger.append(draft)
    stored = list(ledger.iter_events())[0]
    assert stored == event
    assert stored.run == draft.run and stored.details == draft.details
    assert stored.computed_hash() == event.hash
    assert ledger.verify().ok


def test_append_refuses_unknown_event_type(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.append(EventDraft(type="minted"))
    assert ledger.count() == 0


# -- credentials -----------------------------------------------------------------------------

def test_record_mint_writes_event_and_credential(ledger: Ledger) -> None:
    record = credential()
    event = ledger.record_mint(mint_draft(record), record)

    assert event.seq == 1 and event.type == "mint"
    assert ledger.get_credential(record.credential_id) == record
    assert ledger.events_for_credential(record.credential_id) == [event]
    assert ledger.is_revoked(record.credential_id) is False


def test_record_mint_is_atomic(ledger: Ledger) -> None:
    record = mint(ledger)
    head = ledger.head()
    # The second insert of the same credential fails, so its mint event must not remain.
    with pytest.raises(LedgerUnavailable):
        ledger.record_mint(mint_draft(record), record)
    assert ledger.head() == head
    assert ledger.count() == 1
    assert ledger.verify().ok
    ledger.append(EventDraft(type="deny"))          # the ledger is still usable
    assert ledger.head()[0] == 2


def test_record_mint_refuses_an_event_about_another_credential(ledger: Ledger) -> None:
    record = credential()
    with pytest.raises(ValueError):
        ledger.record_mint(mint_draft(credential()), record)
    assert ledger.count() == 0 and ledger.get_credential(record.credential_id) is None


def test_record_revoke_once(ledger: Ledger) -> None:
    record = mint(ledger)
    cid = record.credential_id
    draft = EventDraft(type="revoke", credential_id=cid, details={"cause": "client request"})

    event = ledger.record_revoke(cid, draft, revoked_at=NOW + 10)
    assert event is not None and event.seq == 2
    assert ledger.is_revoked(cid)
    assert ledger.get_credential(cid).revoked_at == NOW + 10

    assert ledger.record_revoke(cid, draft, revoked_at=NOW + 20) is None
    assert ledger.get_credential(cid).revoked_at == NOW + 10
    assert ledger.count() == 2

    unknown = new_credential_id()
    assert ledger.record_revoke(unknown, EventDraft(type="revoke", credential_id=unknown),
                                revoked_at=NOW) is None
    assert ledger.is_revoked(unknown) is False
    assert ledger.count() == 2
    assert ledger.verify().ok


def test_record_end_once(ledger: Ledger) -> None:
    record = mint(ledger)
    cid = record.credential_id
    draft = EventDraft(type="expire", credential_id=cid, details={"result": "role dropped"})

    assert ledger.record_end(cid, draft, ended_at=NOW + 900) is not None
    assert ledger.get_credential(cid).ended_at == NOW + 900
    assert ledger.record_end(cid, draft, ended_at=NOW + 901) is None
    assert ledger.is_revoked(cid) is False            # ending is not revoking
    unknown = new_credential_id()
    assert ledger.record_end(unknown, EventDraft(type="expire", credential_id=unknown),
                             ended_at=NOW) is None
    assert [e.type for e in ledger.events_for_credential(cid)] == ["mint", "expire"]


def test_revoke_and_end_refuse_a_draft_for_another_credential(ledger: Ledger) -> None:
    record = mint(ledger)
    other = EventDraft(type="revoke", credential_id=new_credential_id())
    with pytest.raises(ValueError):
        ledger.record_revoke(record.credential_id, other, revoked_at=NOW)
    with pytest.raises(ValueError):
        ledger.record_end(record.credential_id, other, ended_at=NOW)
    assert ledger.get_credential(record.credential_id) == record


def test_update_credential_details_merges_outside_the_chain(ledger: Ledger) -> None:
    record = mint(ledger)
    head = ledger.head()
    assert ledger.update_credential_details(record.credential_id, {"lease_id": "db/creds/1"})
    assert ledger.update_credential_details(record.credential_id, {"role": "nhb_y"})
    assert ledger.get_credential(record.credential_id).details == {
        "role": "nhb_y", "lease_id": "db/creds/1"}
    assert ledger.update_credential_details(new_credential_id(), {"x": 1}) is False
    assert ledger.head() == head


# -- queries ---------------------------------------------------------------------------------

def test_children_and_find_credentials(ledger: Ledger) -> None:
    root = mint(ledger, principal="ci:a", run={"id": "r1"}, target="orders-db")
    child1 = mint(ledger, parent_id=root.credential_id, principal="agent:x", run={"id": "r1"},
                  issued_at=NOW + 1)
    child2 = mint(ledger, parent_id=root.credential_id, principal="agent:x", run={"id": 77},
                  target="billing-api", issued_at=NOW + 2, expires_at=NOW + 60)
    mint(ledger, principal="ci:b", run={"id": "r2"}, issued_at=NOW + 3)

    assert ledger.children_of(root.credential_id) == [child1, child2]
    assert ledger.children_of(child1.credential_id) == []

    def ids(records: list[CredentialRecord]) -> list[str]:
        return [r.credential_id for r in records]

    assert ids(ledger.find_credentials(principal="agent:x")) == ids([child2, child1])
    assert ids(ledger.find_credentials(run_id="r1")) == ids([child1, root])
    assert ids(ledger.find_credentials(run_id="77")) == ids([child2])
    assert ids(ledger.find_credentials(target="billing-api")) == ids([child2])
    assert ids(ledger.find_credentials(principal="agent:x", target="orders-db")) == ids([child1])
    assert len(ledger.find_credentials(limit=2)) == 2
    assert len(ledger.find_credentials()) == 4

    # active_at: issued at or before, not expired, not revoked, not ended at that instant
    assert ids(ledger.find_credentials(principal="agent:x", active_at=NOW + 100)) == ids([child1])
    assert ids(ledger.find_credentials(principal="agent:x", active_at=NOW)) == []
    ledger.record_revoke(child1.credential_id,
                         EventDraft(type="revoke", credential_id=child1.credential_id),
                         revoked_at=NOW + 50)
    assert ids(ledger.find_credentials(principal="agent:x", active_at=NOW + 49)) == ids(
        [child2, child1])
    assert ids(ledger.find_credentials(principal="agent:x", active_at=NOW + 50)) == ids([child2])


def test_credential_by_backend_user(ledger: Ledger) -> None:
    import dataclasses

    old = dataclasses.replace(credential(issued_at=NOW - 7200, expires_at=NOW - 6300),
                              details={"username": "v-token-payments-ro-abc"})
    new = dataclasses.replace(credential(), details={"username": "v-token-payments-ro-abc"})
    plain = credential()                       # a broker-named role: no backend user
    for record in (old, new, plain):
        ledger.record_mint(mint_draft(record), record)
    assert ledger.credential_by_backend_user("v-token-payments-ro-abc").credential_id == new.credential_id
    found = ledger.credential_by_backend_user("v-token-payments-ro-abc", at=NOW - 7000, slack=0)
    assert found.credential_id == old.credential_id
    assert ledger.credential_by_backend_user("v-token-payments-ro-abc", at=NOW - 20000, slack=0) is None
    assert ledger.credential_by_backend_user("nhb_x") is None
    assert ledger.credential_by_backend_user("%") is None      # no pattern matching


def test_credentials_to_end(ledger: Ledger) -> None:
    expired = mint(ledger, expires_at=NOW + 10)
    live = mint(ledger, expires_at=NOW + 1000)
    revoked = mint(ledger, expires_at=NOW + 1000)
    ledger.record_revoke(revoked.credential_id,
                         EventDraft(type="revoke", credential_id=revoked.credential_id),
                         revoked_at=NOW + 5)
    due = {r.credential_id for r in ledger.credentials_to_end(now=NOW + 10)}
    assert due == {expired.credential_id, revoked.credential_id}
    ledger.record_end(expired.credential_id,
                      EventDraft(type="expire", credential_id=expired.credential_id),
                      ended_at=NOW + 11)
    assert [r.credential_id for r in ledger.credentials_to_end(now=NOW + 10)] == [
        revoked.credential_id]
    assert live.credential_id not in {r.credential_id for r in ledger.credentials_to_end(now=NOW)}


def test_events_for_credential_pages_in_seq_order(ledger: Ledger) -> None:
    record = mint(ledger)
    other = mint(ledger)
    for i in range(6):
        ledger.append(EventDraft(type="usage", credential_id=record.credential_id,
                                 details={"statement": i}))
        ledger.append(EventDraft(type="usage", credential_id=other.credential_id,
                                 details={"statement": i}))
    first = ledger.events_for_credential(record.credential_id, limit=4)
    rest = ledger.events_for_credential(record.credential_id, after_seq=first[-1].seq, limit=4)
    events = first + rest
    assert [e.type for e in events] == ["mint"] + ["usage"] * 6
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len(first) == 4 and len(rest) == 3
    assert {e.credential_id for e in events} == {record.credential_id}
    assert ledger.events_for_credential(new_credential_id()) == []


def test_iter_events_streams_in_batches(ledger: Ledger) -> None:
    appended = [ledger.append(EventDraft(type="introspect", details={"i": i})) for i in range(23)]
    assert list(ledger.iter_events(batch=5)) == appended
    assert list(ledger.iter_events(10, batch=4)) == appended[9:]
    assert list(ledger.iter_events(24)) == []


# -- lifecycle -------------------------------------------------------------------------------

def test_reopening_continues_the_chain(database_url: str, raw_sql) -> None:
    with open_ledger(database_url) as first:
        first.append(EventDraft(type="deny"))
    with open_ledger(database_url) as second:
        event = second.append(EventDraft(type="deny"))
        assert event.seq == 2
        assert second.verify().ok
    assert raw_sql("SELECT version FROM schema_version ORDER BY version") == \
        [(m.version,) for m in sorted(MIGRATIONS, key=lambda m: m.version)]


def test_a_schema_newer_than_the_code_is_refused(ledger: Ledger, database_url: str,
                                                raw_sql) -> None:
    raw_sql("INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)",
            LATEST_VERSION + 1, "from the future", "2030-01-01T00:00:00.000000Z")
    with pytest.raises(LedgerUnavailable, match="newer"):
        open_ledger(database_url)


def test_a_closed_ledger_is_unavailable(database_url: str) -> None:
    store = open_ledger(database_url)
    store.close()
    with pytest.raises(LedgerUnavailable):
        store.append(EventDraft(type="deny"))
    with pytest.raises(LedgerUnavailable):
        store.head()


def test_a_database_error_is_unavailable_with_a_generic_message(ledger: Ledger, raw_sql) -> None:
    ledger.append(EventDraft(type="deny"))
    raw_sql("ALTER TABLE events RENAME TO events_elsewhere")
    with pytest.raises(LedgerUnavailable, match="^ledger database error during append$") as caught:
        ledger.append(EventDraft(type="deny"))
    assert caught.value.__cause__ is not None
    with pytest.raises(LedgerUnavailable):
        list(ledger.iter_events())
    raw_sql("ALTER TABLE events_elsewhere RENAME TO events")
    assert ledger.append(EventDraft(type="deny")).seq == 2   # recovers once the table is back


@pytest.mark.postgres
def test_connections_killed_by_the_server_are_replaced(pg_admin_dsn: str, pg_database: str) -> None:
    import psycopg

    dbname = pg_database.rsplit("/", 1)[1]
    with open_ledger(pg_database) as store:
        store.append(EventDraft(type="deny"))
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()[0]
        assert killed >= 1
        # the pool's check notices the dead connection and hands out a fresh one
        assert store.append(EventDraft(type="deny")).seq == 2
        assert store.verify().ok


@pytest.mark.postgres
def test_unreachable_postgres_is_unavailable_and_never_shows_the_password() -> None:
    url = "postgresql://broker:s3cret-pw@127.0.0.1:1/ledger"
    with pytest.raises(LedgerUnavailable) as caught:
        open_ledger(url, timeout=1)
    assert "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in repr(caught.value)
    assert caught.value.__cause__ is not None


def test_a_malformed_postgres_url_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        open_ledger("postgresql://broker:s3cret-pw@[::1/ledger")
    assert "s3cret-pw" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.postgres
def test_postgres_scheme_alias(pg_database: str) -> None:
    url = "postgres://" + pg_database.split("://", 1)[1]
    with open_ledger(url) as store:
        assert store.append(EventDraft(type="deny")).seq == 1


def test_sqlite_urls(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///relative/dir/ledger.db") as store:
        store.append(EventDraft(type="deny"))
    assert (tmp_path / "relative" / "dir" / "ledger.db").is_file()
    absolute = tmp_path / "abs" / "ledger.db"
    with open_ledger(f"sqlite:///{absolute}") as store:      # sqlite:////abs/… form
        assert store.head()[0] == 0
    assert absolute.is_file() and os.path.isabs(str(absolute))


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://relative.db", "sqlite:///:memory:"])
def test_unsupported_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_ledger(url)
