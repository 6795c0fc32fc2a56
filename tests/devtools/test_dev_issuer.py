"""The dev-only OIDC issuer: refuses to run outside tests/demo, serves real OIDC over HTTP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest

from broker.devtools.dev_issuer import DevIssuer, DevKey
from tests.support.attestation import AUDIENCE, segments


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _env_without_dev_flags() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("BROKER_INSECURE_DEV_ISSUER", "PYTEST_CURRENT_TEST")}


def test_refuses_to_construct_outside_tests_and_demo() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from broker.devtools.dev_issuer import DevIssuer; DevIssuer()"],
        env=_env_without_dev_flags(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "RuntimeError: DevIssuer is an insecure, dev-only OIDC issuer" in result.stderr
    assert "BROKER_INSECURE_DEV_ISSUER=1" in result.stderr


def test_main_refuses_without_the_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "broker.devtools.dev_issuer", "--port", "0"],
                            env=_env_without_dev_flags(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "dev-only" in result.stderr


def test_main_prints_its_issuer_url_and_serves_discovery() -> None:
    env = {**_env_without_dev_flags(), "BROKER_INSECURE_DEV_ISSUER": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "broker.devtools.dev_issuer", "--port", "0",
         "--request-token", "demo-request-token"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as process:
        try:
            _check_running_issuer(process)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _check_running_issuer(process: subprocess.Popen) -> None:
    """What the demo relies on: the issuer URL first, then what a CI step would be given."""
    issuer = process.stdout.readline().strip()
    assert issuer.startswith("http://127.0.0.1:")
    assert process.stdout.readline().strip() == (
        f"ACTIONS_ID_TOKEN_REQUEST_URL={issuer}/token?api-version=2.0")
    assert process.stdout.readline().strip() == (
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN=demo-request-token")
    status, discovery = get(issuer + "/.well-known/openid-configuration")
    assert status == 200 and discovery["issuer"] == issuer
    status, body = get(f"{issuer}/token?api-version=2.0&audience={AUDIENCE}",
                       {"Authorization": "Bearer demo-request-token"})
    assert status == 200 and segments(body["value"])[1]["iss"] == issuer


def test_discovery_document(dev_issuer: DevIssuer) -> None:
    status, doc = get(dev_issuer.issuer + "/.well-known/openid-configuration")
    assert status == 200
    assert doc["issuer"] == dev_issuer.issuer
    assert doc["jwks_uri"] == dev_issuer.issuer + "/.well-known/jwks"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


def test_jwks_publishes_public_keys_only(dev_issuer: DevIssuer) -> None:
    status, jwks = get(dev_issuer.jwks_uri)
    assert status == 200
    [key] = jwks["keys"]
    assert key["kid"] == dev_issuer.kid
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()
    assert jwt.PyJWK(key).key.key_size == 2048


def test_counts_discovery_and_jwks_requests(fresh_issuer: DevIssuer) -> None:
    get(fresh_issuer.issuer + "/.well-known/openid-configuration")
    get(fresh_issuer.jwks_uri)
    get(fresh_issuer.jwks_uri)
    assert fresh_issuer.jwks_requests == 3
    assert fresh_issuer.request_counts["/.well-known/jwks"] == 2


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="no Authorization header"),
    pytest.param({"Authorization": "Bearer wrong"}, id="wrong request token"),
    pytest.param({"Authorization": "Basic abc"}, id="wrong scheme"),
])
def test_token_endpoint_requires_the_request_token(dev_issuer: DevIssuer,
                                                   headers: dict[str, str]) -> None:
    status, body = get(dev_issuer.token_url + "&audience=x", headers)
    assert status == 401 and "value" not in body


def test_token_endpoint_answers_like_github(dev_issuer: DevIssuer) -> None:
    status, body = get(dev_issuer.token_url + "&audience=" + AUDIENCE,
                       {"Authorization": f"Bearer {dev_issuer.request_token}"})
    assert status == 200
    header, claims, _ = segments(body["value"])
    assert header == {"alg": "RS256", "typ": "JWT", "kid": dev_issuer.kid}
    assert claims["aud"] == AUDIENCE and claims["iss"] == dev_issuer.issuer
    assert claims["repository"] == "acme/payments"
    assert claims["job_workflow_ref"] == "acme/payments/.github/workflows/deploy.yml@refs/heads/main"
    assert claims["exp"] - claims["iat"] == 300
    verified = jwt.decode(body["value"], key=dev_issuer.key.private_key.public_key(),
                          algorithms=["RS256"], audience=AUDIENCE, issuer=dev_issuer.issuer)
    assert verified["run_attempt"] == "1"


def test_token_endpoint_default_audience_and_claim_overrides(fresh_issuer: DevIssuer) -> None:
    fresh_issuer.token_claims = {"environment": "staging", "actor": "dependabot[bot]"}
    status, body = get(fresh_issuer.token_url,
                       {"Authorization": f"Bearer {fresh_issuer.request_token}"})
    claims = segments(body["value"])[1]
    assert claims["aud"] == "https://github.com/acme"
    assert (claims["environment"], claims["actor"]) == ("staging", "dependabot[bot]")


def test_mint_fills_registered_claims(dev_issuer: DevIssuer) -> None:
    header, claims, _ = segments(dev_issuer.mint({"sub": "x"}, audience="a", ttl=60, now=1000))
    assert header["kid"] == dev_issuer.kid
    assert {k: claims[k] for k in ("iss", "aud", "iat", "nbf", "exp", "sub")} == {
        "iss": dev_issuer.issuer, "aud": "a", "iat": 1000, "nbf": 1000, "exp": 1060, "sub": "x"}
    assert len(claims["jti"]) == 32


def test_mint_omits_and_overrides(dev_issuer: DevIssuer) -> None:
    token = dev_issuer.mint({"jti": "fixed"}, audience="a", omit=("nbf", "iat"),
                            headers={"kid": None, "typ": "at+jwt"})
    header, claims, _ = segments(token)
    assert "kid" not in header and header["typ"] == "at+jwt"
    assert "nbf" not in claims and "iat" not in claims and claims["jti"] == "fixed"


def test_rotation_keeps_or_drops_old_keys(fresh_issuer: DevIssuer) -> None:
    first = fresh_issuer.kid
    second = fresh_issuer.rotate().kid
    assert [k["kid"] for k in fresh_issuer.jwks()["keys"]] == [first, second]
    third = fresh_issuer.rotate(drop_old=True).kid
    assert [k["kid"] for k in fresh_issuer.jwks()["keys"]] == [third]
    assert fresh_issuer.kid == third


def test_claim_helpers_are_shaped_like_the_platforms() -> None:
    github = DevIssuer.github_claims(environment=None, ref="refs/tags/v1")
    assert "environment" not in github and github["ref"] == "refs/tags/v1"
    assert github["workflow_ref"] == "acme/payments/.github/workflows/deploy.yml@refs/heads/main"
    assert {"sub", "repository_owner", "run_id", "run_attempt", "sha", "actor", "event_name",
            "ref_type", "runner_environment"} <= github.keys()
    gitlab = DevIssuer.gitlab_claims()
    assert gitlab["project_path"] == "acme/payments" and gitlab["pipeline_source"] == "push"
    k8s = DevIssuer.kubernetes_claims(namespace="ops", service_account="backup")
    assert k8s["sub"] == "system:serviceaccount:ops:backup"
    assert k8s["kubernetes.io"]["serviceaccount"]["name"] == "backup"


def test_dev_key_generates_each_algorithm() -> None:
    for alg, kty in (("RS256", "RSA"), ("ES256", "EC"), ("ES384", "EC"), ("EdDSA", "OKP")):
        assert DevKey.generate(alg).public_jwk()["kty"] == kty
