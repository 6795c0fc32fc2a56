"""Every attempt to widen through a child credential, through the real HTTP server: refused with
RFC 6749 JSON and recorded as exactly one `deny` that names the parent (`parent_id`)."""
from __future__ import annotations

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from broker.common.ids import new_credential_id
from broker.keys.file import FileSigner
from tests.support.fanout import derive_form
from tests.support.oauth import AUDITOR, GRANT, JWT_TYPE, basic, claims_of


def post_token(broker, form):
    return requests.post(f"{broker.url}/token", data=form, timeout=10)


def root(broker, *, target="deploy-api", scope="deploy", ttl=None):
    form = {"grant_type": GRANT, "subject_token": broker.dev_issuer.mint_github(audience="nhi-broker-test"),
            "subject_token_type": JWT_TYPE, "audience": target, "scope": scope}
    if ttl:
        form["ttl"] = ttl
    response = post_token(broker, form)
    assert response.status_code == 200, response.text
    return response.json()


def child(broker, parent, target, **form):
    response = post_token(broker, derive_form(parent["access_token"], target, **form))
    assert response.status_code == 200, response.text
    return response.json()


def chain(broker, depth):
    node = root(broker)
    for _ in range(depth):
        node = child(broker, node, "reports-api", scope="reports:read")
    return node


def forged_signature(broker):
    parent = root(broker)
    head, payload, _ = parent["access_token"].split(".")
    return f"{head}.{payload}.{'A' * 86}", parent["credential_id"], False


def other_key(broker):
    parent = root(broker)
    claims = claims_of(parent["access_token"])
    claims["scope"] = "deploy deploy:read"
    header = jwt.get_unverified_header(parent["access_token"])
    token = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                       headers={"kid": header["kid"]})
    return token, parent["credential_id"], False


def unknown_credential(broker):
    parent = root(broker)
    signer = FileSigner(str(broker.state_dir), issuer=broker.url)   # the broker's own key
    claims = {**claims_of(parent["access_token"]), "jti": new_credential_id()}
    return signer.sign(claims), None, True


def revoked(broker):
    parent = root(broker)
    requests.post(f"{broker.url}/revoke", data={"credential_id": parent["credential_id"]},
                  headers=basic(*AUDITOR), timeout=10).raise_for_status()
    return parent["access_token"], parent["credential_id"], True


def revoked_ancestor(broker):
    top = root(broker)
    middle = child(broker, top, "reports-api", scope="reports:read")
    requests.post(f"{broker.url}/revoke", data={"token": top["access_token"]}, timeout=10).raise_for_status()
    return middle["access_token"], middle["credential_id"], True


def expired(broker):
    parent = root(broker, ttl="1")
    time.sleep(2.1)
    return parent["access_token"], parent["credential_id"], True


def plain(make_parent, target, **form):
    def setup(broker):
        parent = make_parent(broker)
        return parent["access_token"], parent["credential_id"], True, target, form
    return setup


def special(make, target="reports-api", **form):
    def setup(broker):
        token, parent_id, verified = make(broker)
        return token, parent_id, verified, target, form
    return setup


CASES = [
    ("target no rule names", plain(root, "audit-api"), "invalid_target"),
    ("unknown target", plain(root, "no-such-api"), "invalid_target"),
    ("rule's from excludes the parent's target", plain(root, "billing-api"), "invalid_target"),
    ("scope wider than the rule", plain(root, "reports-api", scope="reports:admin"), "invalid_scope"),
    ("scope given up up the chain", plain(lambda b: chain(b, 1), "reports-api", scope="reports:write"),
     "invalid_scope"),
    ("plain rule: scope wider than the parent",
     plain(lambda b: root(b, scope="deploy:read"), "deploy-api", scope="deploy"), "invalid_scope"),
    ("ttl beyond the parent's expiry", plain(lambda b: root(b, ttl="60"), "reports-api", ttl="120"),
     "invalid_request"),
    ("depth beyond max_depth", plain(lambda b: chain(b, 3), "reports-api"), "unauthorized_client"),
    ("policy without derive", plain(lambda b: root(b, target="reports-api", scope="reports:read"),
                                    "reports-api"), "unauthorized_client"),
    ("revoked parent", special(revoked), "invalid_grant"),
    ("revoked ancestor", special(revoked_ancestor), "invalid_grant"),
    ("expired parent", special(expired), "invalid_grant"),
    ("forged parent: signature", special(forged_signature), "invalid_grant"),
    ("forged parent: another key", special(other_key), "invalid_grant"),
    ("broker-signed but not in the ledger", special(unknown_credential), "invalid_grant"),
]


@pytest.mark.parametrize("case, setup, error", CASES, ids=[c[0] for c in CASES])
def test_widening_is_refused_and_recorded_with_the_parent(http_broker, case, setup, error):
    token, parent_id, verified, target, form = setup(http_broker)
    before = http_broker.ledger.head()[0]
    response = post_token(http_broker, derive_form(token, target, **form))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error and body["error_description"]
    assert "Traceback" not in response.text

    (deny,) = list(http_broker.ledger.iter_events(before + 1))         # exactly one event
    assert deny.type == "deny" and deny.details["error"] == error
    assert deny.parent_id == parent_id
    assert deny.details["parent_verified"] is verified and deny.details["derive"] is True
    assert deny.details["requested_target"] == target
    assert token not in deny.canonical_bytes().decode()
    if verified and parent_id:
        assert deny.principal == http_broker.ledger.get_credential(parent_id).principal
