"""BROKER_RATE_LIMIT: POST /token per client address, on Redis and on the embedded store."""
from __future__ import annotations

import secrets

import pytest

from broker.http.ratelimit import Limit
from tests.support.oauth import exchange_form
from tests.support.server import running_broker


@pytest.mark.parametrize("spec, expected", [("600/60s", (600, 60)), ("50/s", (50, 1)),
                                            ("1000/1m", (1000, 60)), ("5/2h", (5, 7200))])
def test_limit_spec(spec, expected):
    limit = Limit.parse(spec)
    assert (limit.requests, limit.period) == expected


@pytest.mark.parametrize("spec", ["", "x/60s", "0/60s", "10/0s", "10 per minute", "-1/s"])
def test_bad_limit_spec_is_refused(spec):
    with pytest.raises(ValueError):
        Limit.parse(spec)


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_over_the_limit_is_429_slow_down_and_not_recorded(make_app, tmp_path, dev_issuer, store, request):
    config = {"DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "RATE_LIMIT": "3/1h"}
    if store == "redis":
        config["REDIS_URL"] = request.getfixturevalue("redis_url")
        config["STATE_DIR"] = str(tmp_path / "state-redis")
    app = make_app(**config)
    # A fresh address per run: Redis is shared and the window lasts an hour.
    address = f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"
    client = app.test_client()
    statuses = []
    for _ in range(5):
        token = dev_issuer.mint_github(audience="nhi-broker-test")
        response = client.post("/token", data=exchange_form(token), environ_base={"REMOTE_ADDR": address})
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    body = response.get_json()
    assert body["error"] == "slow_down" and int(response.headers["Retry-After"]) >= 1
    assert body["reason"] == "rate_limited" and "event_id" not in body   # README: refusals
    ledger = app.extensions["broker"].ledger
    assert [e.type for e in ledger.iter_events()] == ["mint", "mint", "mint"]
    # Another address is not affected; other endpoints are not limited.
    other = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test")),
                        environ_base={"REMOTE_ADDR": f"2001:db8::{secrets.token_hex(2)}"})
    assert other.status_code == 200
    assert client.get("/.well-known/jwks.json", environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_rate_limit_store_down_fails_closed(make_app, tmp_path, dev_issuer):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", RATE_LIMIT="100/s",
                   REDIS_URL="redis://127.0.0.1:1/0")
    response = app.test_client().post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test")))
    assert response.status_code == 503 and response.get_json()["error"] == "temporarily_unavailable"


def test_rate_limit_through_the_real_server_behind_a_proxy(tmp_path, policy_dir, dev_issuer):
    env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_RATE_LIMIT": "2/1h", "BROKER_PROXY_FIX_X_FOR": "1"}
    import requests
    with running_broker(env) as base:
        def post(forwarded_for):
            token = dev_issuer.mint_github(audience="nhi-broker-test")
            return requests.post(f"{base}/token", data=exchange_form(token),
                                 headers={"X-Forwarded-For": forwarded_for}, timeout=10).status_code
        first, second = (f"2001:db8::{secrets.token_hex(2)}" for _ in range(2))
        assert [post(first) for _ in range(3)] == [200, 200, 429]
        assert post(second) == 200
