"""Every exported OCSF event validates against the official OCSF schema of the version it
declares (offline: the schema the PyPI package ``ocsf-json-schema`` ships), including the
captions JSON Schema cannot check (``type_name`` of ``type_uid``, ``type`` of ``type_id``…)."""
from __future__ import annotations

import pytest

from broker.audit.ocsf import OCSF_VERSION, to_ocsf
from broker.ledger import Event
from tests.support.oauth import AUDIENCE, AUDITOR, basic, exchange_form
from tests.support.ocsf_schema import ocsf_problems
from tests.support.standards import app, client, ledger, make_app, policy_dir  # noqa: F401 (fixtures)

CID = "01aaaaaaaaaaaaaaaaaaaaaaaa"
RUN = {"id": "r1", "attempt": 2}
AUTHZ = {"type": "policy", "name": "p", "digest": "sha256:00"}


def _event(type_: str, *, credential_id: str | None = CID, principal: str | None = "github:x",
           target: str | None = "orders-db", run=RUN, **details) -> Event:
    return Event(seq=7, ts="2026-03-01T10:00:00.250000Z", type=type_, credential_id=credential_id,
                 parent_id=None, principal=principal, run=run, authorizer=AUTHZ, target=target,
                 details=details, prev_hash="0" * 64, hash="f" * 64)


SYNTHETIC = [
    ("mint", _event("mint", issuer="gha", iss="https://token.actions", expires_at=1772359800)),
    ("mint without an issuer", _event("mint")),
    ("deny", _event("deny", error="invalid_grant", reason="expired", unverified_issuer="https://x")),
    ("deny knowing nothing", _event("deny", credential_id=None, principal=None, target=None,
                                    run=None, error="invalid_request", reason="x")),
    ("expire", _event("expire")),
    ("usage UPDATE", _event("usage", statement="UPDATE a SET b = 1", command_tag="UPDATE",
                            database="orders", client="10.0.0.7(5432)", duration_ms=3)),
    ("usage SELECT", _event("usage", statement="SELECT 1", command_tag="SELECT", database="orders")),
    ("usage VACUUM", _event("usage", statement="VACUUM", command_tag="VACUUM", database="orders")),
    ("usage local", _event("usage", statement="x", database="d", client="[local]")),
    ("usage, database only", _event("usage", database="orders")),
    ("usage introspect", _event("usage", source="introspect", kind="introspect", client="api-gw")),
    ("usage cloudtrail", _event("usage", source="cloudtrail", operation="s3:GetObject")),
    ("usage cloudtrail with its call as statement",
     _event("usage", source="cloudtrail", statement="s3.amazonaws.com GetObject",
            operation="GetObject", event_source="s3.amazonaws.com", source_ip="203.0.113.9")),
    ("introspect", _event("introspect", client="api-gw", active=True)),
    ("introspect refused", _event("introspect", credential_id=None, principal=None, target=None,
                                  result="refused", error="invalid_client", client="mallory",
                                  client_addr="198.51.100.7")),
    ("revoke", _event("revoke", client="ops", result="revoked")),
    ("revoke by the holder", _event("revoke", holder=True, cause="holder request")),
    ("approval_requested", _event("approval_requested", approval_id="apr_1")),
    ("approved", _event("approved", approver="alice")),
    ("denied", _event("denied", approver="bob")),
    ("delegate", _event("delegate", person="alice@example.com")),
    ("gateway usage", _event("usage", statement="UPDATE a SET b = 1", command_tag="UPDATE 1",
                             database="orders", client_addr="10.0.0.7", source="gateway",
                             connection_id="c1", seq=3, rows=1, duration_ms=0.4)),
    ("gateway connect", _event("connect", result="accepted", client_addr="10.0.0.7",
                               source="gateway", upstream_user="nhb_x")),
    ("gateway connect refused", _event("connect", credential_id=None, principal=None, run=None,
                                       result="refused", sqlstate="28P01", reason="bad token",
                                       client_addr="10.0.0.7", source="gateway")),
    ("gateway disconnect", _event("disconnect", statements=3, client_addr="10.0.0.7",
                                  source="gateway")),
    ("gateway records dropped", _event("gateway", credential_id=None, principal=None, run=None,
                                       kind="records_dropped", records_dropped=4)),
]


@pytest.mark.parametrize("case, event", SYNTHETIC, ids=[c for c, _ in SYNTHETIC])
def test_every_kind_of_event_validates(case, event):
    record = to_ocsf(event)
    assert record["metadata"]["version"] == OCSF_VERSION
    assert ocsf_problems(record) == []


def test_a_real_ledger_exports_valid_ocsf(client, ledger, dev_issuer):
    minted = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE)))
    token = minted.get_json()["access_token"]
    client.post("/token", data=exchange_form("not.a.token"))
    client.post("/introspect", data={"token": token}, headers=basic(*AUDITOR))
    client.post("/introspect", data={"token": token}, headers=basic(AUDITOR[0], "wrong"))
    client.post("/revoke", data={"token": token}, headers=basic(*AUDITOR))
    events = list(ledger.iter_events())
    assert {e.type for e in events} >= {"mint", "deny", "introspect", "usage", "revoke"}
    for event in events:
        assert ocsf_problems(to_ocsf(event)) == [], event.type


def test_the_validator_is_not_vacuous():
    record = to_ocsf(SYNTHETIC[0][1])
    broken = {**record, "type_name": "Authentication: Logoff"}
    assert ocsf_problems(broken)
    assert ocsf_problems({**record, "actor": {"app_name": "x"}})
    assert ocsf_problems({**record, "severity_id": 1, "severity": "High"})


def test_cloudtrail_usage_is_api_activity_not_a_database():
    event = _event("usage", source="cloudtrail", statement="s3.amazonaws.com GetObject",
                   operation="GetObject")
    record = to_ocsf(event)
    assert record["class_uid"] == 6003 and "database" not in record
