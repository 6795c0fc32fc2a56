"""Revocation: the credential id joins the deny statement on the role (``aws:SourceIdentity``),
expired entries are pruned, other statements are kept, and a revocation AWS did not take leaves
the ledger as it was. Moto does not evaluate conditions in identity policies, so whether a
session is denied is judged here from the document IAM holds, as IAM's rule reads: an explicit
``Deny`` of ``*`` whose ``StringEquals aws:SourceIdentity`` lists the session's source identity."""
from __future__ import annotations

import base64
import json
import time

import requests

from broker.targets.aws.denylist import BUCKET_SECONDS, SID_PREFIX
from tests.support.oauth import AUDITOR
from tests.targets.aws.test_aws_mint import mint


def denied_by(document, source_identity: str) -> bool:
    for statement in (document or {}).get("Statement", []):
        values = statement.get("Condition", {}).get("StringEquals", {}).get("aws:SourceIdentity", [])
        if statement.get("Effect") == "Deny" and statement.get("Action") == "*" and \
                source_identity in ([values] if isinstance(values, str) else values):
            return True
    return False


def revoke(broker, token: str) -> requests.Response:
    return requests.post(f"{broker.url}/revoke", data={"token": token}, timeout=30)


def test_revoking_denies_the_session_on_the_role(broker, dev_issuer, moto, gate):
    first, second = mint(broker, dev_issuer).json(), mint(broker, dev_issuer).json()
    assert revoke(broker, first["access_token"]).status_code == 200
    document = moto.role_policy("deploy", "nhi-broker-revoked")
    assert denied_by(document, first["credential_id"])
    assert not denied_by(document, second["credential_id"])
    assert broker.ledger.is_revoked(first["credential_id"])
    assert revoke(broker, second["access_token"]).status_code == 200
    document = moto.role_policy("deploy", "nhi-broker-revoked")
    assert denied_by(document, first["credential_id"]) and denied_by(document, second["credential_id"])
    assert all(s["Sid"].startswith(SID_PREFIX) for s in document["Statement"])
    revoked = [e for e in broker.ledger.events_for_credential(first["credential_id"]) if e.type == "revoke"]
    assert len(revoked) == 1 and revoked[0].details["result"] == "revoked"


def test_expired_entries_are_pruned_and_other_statements_kept(broker, dev_issuer, moto, gate):
    old = (int(time.time()) // BUCKET_SECONDS - 8) * BUCKET_SECONDS
    mine = {"Sid": "KeepMe", "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}
    stale = {"Sid": f"{SID_PREFIX}{old}", "Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"StringEquals": {"aws:SourceIdentity": ["01aaaaaaaaaaaaaaaaaaaaaaaa"]}}}
    moto.client("iam").put_role_policy(RoleName="deploy", PolicyName="nhi-broker-revoked", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [mine, stale]}))
    body = mint(broker, dev_issuer).json()
    assert revoke(broker, body["access_token"]).status_code == 200
    document = moto.role_policy("deploy", "nhi-broker-revoked")
    assert mine in document["Statement"]
    assert not denied_by(document, "01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert denied_by(document, body["credential_id"])


def test_a_revocation_iam_does_not_take_records_nothing(broker, dev_issuer, moto, gate, monkeypatch):
    from tests.support.server import free_port

    body = mint(broker, dev_issuer).json()
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", f"http://127.0.0.1:{free_port()}")   # before first IAM use
    response = revoke(broker, body["access_token"])
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert not broker.ledger.is_revoked(body["credential_id"])
    assert moto.role_policy("deploy", "nhi-broker-revoked") is None


def test_an_exchange_with_a_revoked_session_parent_is_refused_but_sts_is_not_asked_again(broker, dev_issuer, gate):
    body = mint(broker, dev_issuer).json()
    assert revoke(broker, body["access_token"]).status_code == 200
    calls = len(gate.calls)
    again = requests.post(f"{broker.url}/token", timeout=30, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": body["access_token"],
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": "deploy-aws"})
    assert again.status_code == 400 and len(gate.calls) == calls


def test_the_web_identity_token_is_not_a_broker_credential(broker, dev_issuer, gate):
    mint(broker, dev_issuer)
    token = gate.calls[0].token
    response = requests.post(f"{broker.url}/token", timeout=30, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": "deploy-aws"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_the_web_identity_token_is_neither_introspected_nor_revoked_as_the_credential(
        broker, dev_issuer, gate):
    """It is signed with the broker's key and carries the credential id as ``jti``, but its
    ``typ`` is ``JWT``, not ``at+jwt``: only the credential itself is a credential."""
    credential_id = mint(broker, dev_issuer).json()["credential_id"]
    token = gate.calls[-1].token
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["typ"] == "JWT"
    introspected = requests.post(f"{broker.url}/introspect", data={"token": token},
                                 auth=AUDITOR, timeout=30)
    assert introspected.status_code == 200 and introspected.json() == {"active": False}
    revoked = requests.post(f"{broker.url}/revoke", data={"token": token}, auth=AUDITOR, timeout=30)
    assert revoked.status_code == 200                          # RFC 7009: unknown token, no-op
    assert broker.ledger.get_credential(credential_id).revoked_at is None
