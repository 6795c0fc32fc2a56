"""What AWS refuses, and what the broker refuses before asking it: a clean RFC 6749 error, one
``deny`` event with AWS's reason, no credential, no stack trace, no token anywhere."""
from __future__ import annotations

import json
import logging
import time

import pytest
import requests

from tests.support.oauth import AUDIENCE
from tests.targets.aws.test_aws_mint import form


def _refused(broker, dev_issuer, caplog, *, audience: str = "deploy-aws", ttl: str | None = None):
    """The refusal and its one record: a ``deny``, or — when AWS is unavailable (503) — the
    ``outage`` event that starts counting such refusals (docs/operations.md)."""
    caplog.set_level(logging.INFO)
    response = requests.post(f"{broker.url}/token", timeout=30, data=form(
        dev_issuer.mint_github(audience=AUDIENCE), audience=audience, ttl=ttl))
    kind = "outage" if response.status_code == 503 else "deny"
    denies = broker.ledger.search_events(type=kind)
    deadline = time.monotonic() + 5                 # an outage is written in the background
    while not denies and kind == "outage" and time.monotonic() < deadline:
        time.sleep(0.02)
        denies = broker.ledger.search_events(type=kind)
    assert len(denies) == 1, denies
    assert not broker.ledger.search_events(type="outage" if kind == "deny" else "deny")
    assert not broker.ledger.find_credentials()
    assert "Traceback" not in response.text and "Traceback" not in caplog.text
    return response, denies[0]


CASES = [
    # (case, target, how STS is set up, status, error, AWS code or reason in the ledger)
    ("the role's trust policy does not trust the principal", "locked-aws", None, 400,
     "invalid_target", "AccessDenied"),
    ("STS throttles", "deploy-aws", ("Throttling", "Rate exceeded", 400), 503,
     "temporarily_unavailable", "Throttling"),
    ("STS fails on its side", "deploy-aws", ("InternalFailure", "internal", 500), 503,
     "temporarily_unavailable", "InternalFailure"),
    ("STS says the token expired", "deploy-aws", ("ExpiredTokenException", "Token expired", 400), 400,
     "invalid_target", "ExpiredTokenException"),
    ("STS is down", "down-aws", None, 503, "temporarily_unavailable", "cannot reach AWS"),
]


@pytest.mark.parametrize("case,target,failing,status,error,reason", CASES, ids=[c[0] for c in CASES])
def test_aws_refusals_are_clean_errors_and_one_record(broker, dev_issuer, gate, caplog, case, target, failing,
                                                    status, error, reason):
    gate.failing = failing
    response, deny = _refused(broker, dev_issuer, caplog, audience=target)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert deny.details["error"] == error and reason in deny.details["reason"]
    if gate.calls:                            # what was sent is never repeated back
        token = gate.calls[0].token
        assert token not in response.text and token not in json.dumps(deny.to_dict())
        assert token not in caplog.text


def test_a_broker_aws_does_not_know_is_refused(broker, dev_issuer, gate, moto, caplog):
    moto.client("iam").delete_open_id_connect_provider(OpenIDConnectProviderArn=broker.provider_arn)
    response, deny = _refused(broker, dev_issuer, caplog)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    assert gate.calls[0].refused == "InvalidIdentityToken"
    assert "InvalidIdentityToken" in deny.details["reason"]


def test_a_ttl_below_what_sts_grants_is_refused_before_sts(broker, dev_issuer, gate, caplog):
    response, deny = _refused(broker, dev_issuer, caplog, ttl="5m")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"
    assert response.json()["reason"] == "ttl_too_short"
    assert "900" in response.json()["error_description"]
    assert not gate.calls


def test_a_credential_granted_sts_minimum_gets_it_even_when_the_exchange_took_a_moment(broker, gate):
    """Granted exactly 900 s at the start of an exchange that then took two seconds (a busy
    broker): STS's floor still applies, and the session's real expiry is what is recorded."""
    from broker.common.ids import new_credential_id
    from broker.targets import IssueRequest

    ctx = broker.app.extensions["broker"]
    target = ctx.policy_set.targets["deploy-aws"]
    started = int(time.time()) - 2
    issued = ctx.issuers["aws"].issue(IssueRequest(
        credential_id=new_credential_id(), target=target, principal="github:acme/payments:x",
        run={"id": "1"}, authorizer={"type": "policy", "name": "deploy"}, scopes=(),
        issued_at=started, expires_at=started + 900))
    assert gate.calls[-1].form["DurationSeconds"] == "900"
    assert issued.details["aws_expiration"]                # what STS granted, recorded
