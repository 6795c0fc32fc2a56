"""A CI user can act on a refusal: each way an attestation is refused has its own stable
``reason`` in the RFC 6749 JSON (and ``reason_code`` in the deny event)."""
from __future__ import annotations

import time

import pytest

from tests.support.oauth import AUDIENCE, exchange_form


def _refusal(client, ledger, token: str) -> tuple[dict, dict]:
    response = client.post("/token", data=exchange_form(token))
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_grant"
    deny = list(ledger.iter_events())[-1]
    assert deny.type == "deny"
    return body, deny.details


@pytest.mark.parametrize("case,reason", [
    ("expired", "expired"),
    ("another audience", "audience_mismatch"),
    ("an extra audience", "audience_mismatch"),
    ("an untrusted issuer", "untrusted_issuer"),
    ("a bad signature", "subject_refused"),
])
def test_each_refusal_has_its_reason(client, ledger, dev_issuer, fresh_issuer, case, reason):
    token = {
        "expired": lambda: dev_issuer.mint(dev_issuer.github_claims(), audience=AUDIENCE, ttl=60,
                                            now=time.time() - 3600),
        "another audience": lambda: dev_issuer.mint_github(audience="someone-else"),
        "an extra audience": lambda: dev_issuer.mint(dev_issuer.github_claims(),
                                                     audience=[AUDIENCE, "someone-else"]),
        "an untrusted issuer": lambda: fresh_issuer.mint_github(audience=AUDIENCE),
        "a bad signature": lambda: dev_issuer.mint_github(audience=AUDIENCE)[:-4] + "AAAA",
    }[case]()
    body, details = _refusal(client, ledger, token)
    assert body["reason"] == reason and details["reason_code"] == reason


def test_a_replay_is_replayed(client, ledger, dev_issuer):
    token = dev_issuer.mint_github(audience=AUDIENCE)
    assert client.post("/token", data=exchange_form(token)).status_code == 200
    body, details = _refusal(client, ledger, token)
    assert body["reason"] == "replayed" and details["reason_code"] == "replayed"
