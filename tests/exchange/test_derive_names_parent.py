"""Every derive attempt names its parent, also one refused before the derive rules run."""
from __future__ import annotations

from tests.support.oauth import AUDIENCE, exchange_form
from tests.support.standards import app, client, ledger, make_app, policy_dir  # noqa: F401 (fixtures)


def test_a_derivation_refused_for_approval_id_records_the_parent(client, ledger, dev_issuer):
    parent = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE)))
    assert parent.status_code == 200, parent.get_data(as_text=True)
    parent_id = parent.get_json()["credential_id"]
    before = ledger.count()
    response = client.post("/token", data=exchange_form(parent.get_json()["access_token"],
                                                        approval_id="apr_0123456789"))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    events = list(ledger.iter_events(before + 1))
    assert [e.type for e in events] == ["deny"]
    assert events[0].parent_id == parent_id
    assert events[0].details["derive"] is True and events[0].details["parent_verified"] is True
