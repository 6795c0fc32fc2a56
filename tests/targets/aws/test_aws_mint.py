"""Minting AWS sessions through the real HTTP API against moto's STS, with the exact
web-identity token the broker sends checked as AWS checks it (tests/support/aws.py)."""
from __future__ import annotations

import hashlib
import json

import boto3
import jwt
import requests

from tests.support.aws import REGION, SOURCE_IDENTITY_CLAIM, TAGS_CLAIM, verify_as_aws
from tests.support.oauth import AUDIENCE, GRANT, JWT_TYPE


def form(subject_token: str, *, audience: str = "deploy-aws", scope: str | None = "deploy:read",
         ttl: str | None = None) -> dict[str, str]:
    out = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
           "audience": audience}
    if scope:
        out["scope"] = scope
    if ttl:
        out["ttl"] = ttl
    return out


def mint(broker, dev_issuer, **kwargs):
    return requests.post(f"{broker.url}/token", data=form(dev_issuer.mint_github(audience=AUDIENCE), **kwargs),
                         timeout=30)


def test_a_mint_returns_an_aws_session_named_by_the_credential_id(broker, dev_issuer, gate, moto):
    response = mint(broker, dev_issuer)
    assert response.status_code == 200, response.text
    body = response.json()
    cid, cred = body["credential_id"], body["credential"]
    assert set(cred) == {"type", "access_key_id", "secret_access_key", "session_token", "expiration",
                         "region", "assumed_role_arn"}
    assert cred["type"] == "aws" and cred["region"] == "eu-west-1"
    assert cred["assumed_role_arn"] == f"arn:aws:sts::123456789012:assumed-role/deploy/{cid}"
    [call] = gate.calls
    assert call.refused is None
    assert call.form["RoleSessionName"] == cid
    assert call.form["RoleArn"] == broker.roles["deploy"]
    assert abs(int(call.form["DurationSeconds"]) - body["expires_in"]) <= 2
    # The session works: STS itself says who it is.
    sts = boto3.client("sts", endpoint_url=moto.url, region_name=REGION, aws_access_key_id=cred["access_key_id"],
                       aws_secret_access_key=cred["secret_access_key"], aws_session_token=cred["session_token"])
    assert sts.get_caller_identity()["Arn"] == cred["assumed_role_arn"]


def test_the_token_sent_to_sts_is_what_aws_accepts(broker, dev_issuer, gate):
    body = mint(broker, dev_issuer).json()
    cid = body["credential_id"]
    [call] = gate.calls
    # Verified again here, independently of the gate: discovery → JWKS → signature → claims.
    discovery = requests.get(f"{broker.url}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == broker.url
    claims = verify_as_aws(call.token, provider_urls={broker.url.split("://")[1]: ["sts.amazonaws.com"]})
    header = jwt.get_unverified_header(call.token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert header["kid"] in {k["kid"] for k in requests.get(discovery["jwks_uri"], timeout=5).json()["keys"]}
    assert claims["iss"] == broker.url
    assert claims["aud"] == "sts.amazonaws.com"
    assert claims["sub"] == "github:acme/payments:acme/payments/.github/workflows/deploy.yml@refs/heads/main"
    assert claims["jti"] == cid
    assert claims[SOURCE_IDENTITY_CLAIM] == cid
    assert claims["exp"] - claims["iat"] <= 300          # it only has to live through the call
    assert "target" not in claims                        # never usable as a broker credential
    tags = claims[TAGS_CLAIM]
    principal_tags = tags["principal_tags"]
    run = broker.ledger.get_credential(cid).run
    assert principal_tags == {
        "credential_id": [cid], "run_id": [run["id"]], "authorizer": ["policy:deploy"],
        "policy_digest": [broker.ledger.get_credential(cid).authorizer["digest"]],
        "repository": ["acme/payments"], "environment": ["production"]}   # pr: no such run field
    assert sorted(tags["transitive_tag_keys"]) == sorted(principal_tags)


def test_the_ledger_records_the_session_but_no_secret(broker, dev_issuer, gate):
    body = mint(broker, dev_issuer).json()
    cid, cred = body["credential_id"], body["credential"]
    record = broker.ledger.get_credential(cid)
    details = record.details
    assert details["access_key_id"] == cred["access_key_id"]
    assert details["assumed_role_arn"] == cred["assumed_role_arn"]
    assert details["aws_expiration"] == cred["expiration"]
    assert details["session_token_sha256"] == hashlib.sha256(cred["session_token"].encode()).hexdigest()
    assert details["source_identity"] == cid and details["session_name"] == cid
    assert details["web_identity_token_sha256"] == hashlib.sha256(gate.calls[0].token.encode()).hexdigest()
    [mint_event] = [e for e in broker.ledger.events_for_credential(cid) if e.type == "mint"]
    everything = json.dumps([e.to_dict() for e in broker.ledger.iter_events()]) + json.dumps(details)
    for secret in (cred["secret_access_key"], cred["session_token"], gate.calls[0].token):
        assert secret not in everything
    assert mint_event.details["access_key_id"] == cred["access_key_id"]


def test_granted_scopes_add_their_session_policy_statements(broker, dev_issuer, gate):
    assert mint(broker, dev_issuer, scope="deploy:read").status_code == 200
    assert mint(broker, dev_issuer, scope="deploy:read deploy:write").status_code == 200
    read_only, read_write = (json.loads(c.form["Policy"]) for c in gate.calls)
    assert [s["Sid"] for s in read_only["Statement"]] == ["Read"]
    assert [s["Sid"] for s in read_write["Statement"]] == ["Read", "Write"]


def test_token_mode_returns_a_web_identity_token_that_sts_takes(broker, dev_issuer, gate, moto):
    response = mint(broker, dev_issuer, audience="token-aws")
    assert response.status_code == 200, response.text
    body = response.json()
    cid, cred = body["credential_id"], body["credential"]
    assert cred["type"] == "aws-web-identity" and cred["role_session_name"] == cid
    assert not gate.calls                               # the broker did not call STS
    sts = boto3.client("sts", endpoint_url=gate.url, region_name=REGION)
    answer = sts.assume_role_with_web_identity(RoleArn=cred["role_arn"], RoleSessionName=cred["role_session_name"],
                                               WebIdentityToken=cred["web_identity_token"], DurationSeconds=900)
    assert answer["AssumedRoleUser"]["Arn"].endswith(f"/deploy/{cid}")
    claims = gate.calls[0].claims
    assert claims[SOURCE_IDENTITY_CLAIM] == cid and claims["jti"] == cid
    assert abs(claims["exp"] - claims["iat"] - body["expires_in"]) <= 3   # lives as long as the credential
