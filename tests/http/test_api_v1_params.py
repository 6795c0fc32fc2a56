"""Every /v1/ endpoint refuses unknown query parameters and answers Cache-Control: no-store
(docs: README "API"), found from the app's own URL map so a new endpoint cannot be missed."""
from __future__ import annotations

import re

import pytest

from tests.support.oauth import AUDITOR, basic

SAMPLE = {"credential_id": "01aaaaaaaaaaaaaaaaaaaaaaaa", "run_id": "4242",
          "principal": "github:acme/payments", "approval_id": "apr_01aaaaaaaaaaaaaaaaaaaaaaaa",
          "delegation_id": "dlg_01aaaaaaaaaaaaaaaaaaaaaaaa"}


def _v1_get_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/") and "GET" in rule.methods:
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: SAMPLE[m.group(1)], rule.rule)
            yield rule.endpoint, path


def test_every_v1_get_endpoint_refuses_unknown_parameters_and_is_no_store(app, client):
    routes = list(_v1_get_routes(app))
    assert len(routes) >= 8
    for endpoint, path in routes:
        response = client.get(path, query_string={"bogus": "1"}, headers=basic(*AUDITOR))
        assert response.headers.get("Cache-Control") == "no-store", (endpoint, response.headers)
        if endpoint.startswith("people_api."):    # a person's bearer token and a human-idp
            continue                              # come first (tests/approvals covers them)
        assert response.status_code == 400, (endpoint, response.get_json())
        assert response.get_json()["error"] == "invalid_request", endpoint


@pytest.mark.parametrize("path", ["/v1/ledger/checkpoint", "/v1/events", "/v1/usage"])
def test_answers_are_no_store(client, path):
    response = client.get(path, headers=basic(*AUDITOR))
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
