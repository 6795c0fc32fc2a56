"""The agent SDK against the real HTTP server: mint, derive three levels deep, revoke on exit
(the whole tree), errors with the broker's code, secrets kept out of reprs, auto-renewal."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from broker.sdk import CREDENTIAL_ID_HEADER, Broker, BrokerError, BrokerUnreachable
from tests.support.oauth import AUDIENCE, AUDITOR, basic, claims_of
from tests.support.server import free_port


@pytest.fixture
def sdk(http_broker) -> Broker:
    dev = http_broker.dev_issuer
    return Broker(http_broker.url, subject_token=lambda: dev.mint_github(audience=AUDIENCE))


def active(broker, cred) -> bool:
    token = cred if isinstance(cred, str) else cred._issued.access_token
    response = requests.post(f"{broker.url}/introspect", data={"token": token},
                             headers=basic(*AUDITOR), timeout=10)
    return response.json()["active"]


def test_mint_derive_three_deep_and_revoking_the_root_on_exit_ends_every_descendant(http_broker, sdk):
    ledger = http_broker.ledger
    with sdk.credential("deploy-api", scope="deploy", ttl="10m") as root:
        child = root.derive("reports-api", scope="reports:read")
        grandchild = child.derive("reports-api")
        great = grandchild.derive("billing-api", scope=["billing:read"])
        tree = [root, child, grandchild, great]
        assert [c.parent_id for c in tree] == [None, root.credential_id, child.credential_id,
                                               grandchild.credential_id]
        assert great.parent is grandchild and great.scope == ("billing:read",)
        assert great.expires_at <= root.expires_at + 1
        assert claims_of(great.access_token)["act"]["act"]["act"]["sub"] == root.credential_id
        assert all(active(http_broker, c) for c in tree)
        tokens = [c.access_token for c in tree]
        assert great.headers() == {"Authorization": f"Bearer {tokens[3]}",
                                   CREDENTIAL_ID_HEADER: great.credential_id}
    assert all(c.closed for c in tree)
    assert not any(active(http_broker, t) for t in tokens)
    (root_revoke,) = [e for e in ledger.events_for_credential(root.credential_id) if e.type == "revoke"]
    assert root_revoke.details["cause"] == "holder request"
    for cred in tree[1:]:
        (event,) = [e for e in ledger.events_for_credential(cred.credential_id) if e.type == "revoke"]
        assert event.details["cause"] == "parent revoked" and event.details["root"] == root.credential_id
        assert event.parent_id == cred.parent_id
    with pytest.raises(BrokerError) as caught:
        great.headers()
    assert caught.value.error == "invalid_grant"


def test_closing_a_child_early_leaves_the_parent_alive(http_broker, sdk):
    with sdk.credential("deploy-api") as root:
        with root.derive("reports-api") as child:
            assert active(http_broker, child)
        assert not active(http_broker, child._issued.access_token)
        assert active(http_broker, root)


def test_refusals_carry_the_brokers_error_code(http_broker, sdk):
    with pytest.raises(BrokerError) as caught:
        sdk.credential("deploy-api", scope="admin")
    assert (caught.value.error, caught.value.status) == ("invalid_scope", 400)
    assert caught.value.description == "requested scope is not allowed"
    with sdk.credential("deploy-api") as root:
        with pytest.raises(BrokerError) as caught:
            root.derive("audit-api")
        assert caught.value.error == "invalid_target"
        with pytest.raises(BrokerError) as caught:
            root.derive("reports-api", ttl="2h")
        assert caught.value.error == "invalid_request" and "outlives" in (caught.value.description or "")
    static = Broker(http_broker.url, subject_token=http_broker.dev_issuer.mint_github(audience=AUDIENCE))
    static.credential("deploy-api").close()
    with pytest.raises(BrokerError) as caught:           # an attestation is single-use
        static.credential("deploy-api")
    assert caught.value.error == "invalid_grant"


def test_an_unreachable_broker_is_a_clear_error():
    broker = Broker(f"http://127.0.0.1:{free_port()}", subject_token="x", timeout=2)
    with pytest.raises(BrokerUnreachable) as caught:
        broker.credential("deploy-api")
    assert caught.value.error == "temporarily_unavailable" and caught.value.status is None


def test_secrets_stay_out_of_reprs_and_errors(http_broker, sdk):
    with sdk.credential("deploy-api", scope="deploy") as cred:
        token = cred.access_token
        for text in (repr(cred), str(cred), repr(cred._issued), repr(sdk)):
            assert token not in text and token.split(".")[2] not in text
        assert cred.credential_id in repr(cred)
        try:
            Broker(http_broker.url, subject_token=token).credential("nope")
        except BrokerError as exc:
            assert token not in str(exc) and token not in repr(exc.body)


def test_auto_renew_replaces_the_credential_before_expiry_with_a_fresh_attestation(http_broker, sdk):
    ledger = http_broker.ledger
    with pytest.raises(ValueError):
        Broker(http_broker.url, subject_token="static").credential("deploy-api", auto_renew=True)
    seen, stop, problems = set(), threading.Event(), []

    def reader(cred):
        while not stop.is_set():
            try:
                headers = cred.headers()
                seen.add(headers[CREDENTIAL_ID_HEADER])
                assert headers["Authorization"].startswith("Bearer ey")
            except Exception as exc:  # noqa: BLE001
                problems.append(exc)
            time.sleep(0.01)

    with sdk.credential("deploy-api", ttl="4", auto_renew=True, renew_margin=2) as cred:
        first = cred.credential_id
        readers = [threading.Thread(target=reader, args=(cred,)) for _ in range(4)]
        for t in readers:
            t.start()
        deadline = time.monotonic() + 10
        while (cred.credential_id == first or cred.credential_id not in seen) \
                and time.monotonic() < deadline:
            time.sleep(0.05)                # until the readers have seen the renewed one
        stop.set()
        for t in readers:
            t.join()
        assert cred.credential_id != first and cred.last_renewal_error is None
        assert active(http_broker, cred)
        renewed = cred.credential_id
    assert not problems and {first, renewed} <= seen
    for credential_id in (first, renewed):       # every credential it held is revoked on exit
        assert ledger.get_credential(credential_id).revoked_at is not None
