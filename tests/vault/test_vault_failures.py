"""Vault failures become clean RFC 6749 refusals and one ``deny`` event (an ``outage`` when
Vault is down: docs/operations.md); nothing is
half-recorded; no token, secret id or password reaches a response, a log line or the ledger."""
from __future__ import annotations

import json
import logging

import pytest

from tests.support.records import last_refusal
from tests.support.vault import all_ledger_text, cluster_roles, leases, mint, sealed

LIMITED_TARGET = """
---
kind: target
name: limited-db
type: vault-database
vault: {addr_env: NHB_TEST_VAULT_ADDR, token_env: NHB_TEST_VAULT_LIMITED_TOKEN}
role: app-readonly
connect: {host: 127.0.0.1, port: 5432, dbname: postgres}
max_ttl: 15m
---
kind: policy
name: limited
issuer: gha
targets: [limited-db]
match: {repository: acme/payments}
"""


def assert_clean_refusal(response, status: int, error: str) -> dict:
    assert response.status_code == status
    body = response.get_json()
    assert set(body) <= {"error", "error_description", "reason", "event_id"}  # docs: README refusals
    assert body["error"] == error
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def last_deny(ledger):
    events = list(ledger.iter_events())
    assert events[-1].type == "deny"
    return events[-1]


def last_outage(app):
    """A 503 because Vault is down is counted into the target's ``outage`` event."""
    event = last_refusal(app)
    assert event.type == "outage" and event.details["phase"] == "start"
    return event


def test_a_sealed_vault_is_temporarily_unavailable_and_nothing_is_recorded(
        app, client, dev_issuer, vault_env, bao, ledger, caplog):
    caplog.set_level(logging.DEBUG)
    assert mint(client, dev_issuer).status_code == 200                     # logged in, working
    before_leases, before_roles = leases(bao), cluster_roles(vault_env)
    with sealed(bao):
        response = mint(client, dev_issuer)
    body = assert_clean_refusal(response, 503, "temporarily_unavailable")
    assert "Vault" in body["error_description"]
    deny = last_outage(app)
    assert deny.details["error"] == "temporarily_unavailable"
    assert "sealed" in deny.details["reason"]
    assert deny.target == "payments-db-vault"
    assert len(ledger.find_credentials(limit=100)) == 1                    # only the first mint
    assert leases(bao) == before_leases and cluster_roles(vault_env) == before_roles
    assert mint(client, dev_issuer).status_code == 200                     # unsealed: works again
    text = all_ledger_text(ledger) + caplog.text
    assert bao.root_token not in text


def test_an_unreachable_vault_is_temporarily_unavailable(app, client, dev_issuer, vault_env, ledger):
    response = mint(client, dev_issuer, audience="vault-down-db")
    assert_clean_refusal(response, 503, "temporarily_unavailable")
    deny = last_outage(app)
    assert "connection failed" in deny.details["reason"]
    assert ledger.find_credentials(limit=10) == []


def test_an_unknown_vault_role_is_an_invalid_target(client, dev_issuer, vault_env, ledger):
    response = mint(client, dev_issuer, audience="missing-role-db")
    assert_clean_refusal(response, 400, "invalid_target")
    assert "unknown role" in last_deny(ledger).details["reason"]
    assert ledger.find_credentials(limit=10) == []


@pytest.fixture
def policy_extra(bao, monkeypatch) -> str:
    # A token whose policy lacks database/creds: Vault answers "permission denied".
    c = bao.client()
    c.sys.create_or_update_policy("no-db", 'path "transit/*" { capabilities = ["read"] }')
    token = c.auth.token.create(policies=["no-db"], ttl="1h")["auth"]["client_token"]
    monkeypatch.setenv("NHB_TEST_VAULT_LIMITED_TOKEN", token)
    return LIMITED_TARGET


def test_permission_denied_is_an_invalid_target_and_never_shows_the_token(
        client, dev_issuer, vault_env, ledger, caplog, monkeypatch):
    import os

    caplog.set_level(logging.DEBUG)
    token = os.environ["NHB_TEST_VAULT_LIMITED_TOKEN"]
    response = mint(client, dev_issuer, audience="limited-db")
    assert_clean_refusal(response, 400, "invalid_target")
    assert "permission denied" in last_deny(ledger).details["reason"]
    assert token not in response.get_data(as_text=True)
    assert token not in all_ledger_text(ledger) + caplog.text


def test_a_broker_token_that_would_die_before_the_lease_is_refused(client, dev_issuer, vault_env, ledger,
                                                                   caplog):
    # The AppRole issues 30-second tokens; the lease would live 10 minutes and Vault would
    # revoke it with the token. The broker refuses instead of handing out a doomed credential.
    caplog.set_level(logging.DEBUG)
    response = mint(client, dev_issuer, audience="short-token-db")
    assert_clean_refusal(response, 400, "invalid_target")
    assert "cannot live" in last_deny(ledger).details["reason"]
    secret_id = vault_env.short_secret_id_file.read_text().strip()
    assert secret_id not in caplog.text + all_ledger_text(ledger)


def test_a_short_lease_with_a_short_token_is_fine(client, dev_issuer, vault_env):
    # ttl 5s + 60s margin > the token's 30s: still refused; the margin is the broker's rule.
    response = mint(client, dev_issuer, audience="short-token-db", ttl="5s")
    assert response.status_code == 400


def test_revoke_while_vault_is_sealed_changes_nothing_until_it_succeeds(
        client, dev_issuer, vault_env, bao, ledger):
    from tests.support.oauth import AUDITOR, basic

    body = mint(client, dev_issuer).get_json()
    cid = body["credential_id"]
    with sealed(bao):
        response = client.post("/revoke", data={"credential_id": cid}, headers=basic(*AUDITOR))
        assert response.status_code == 503
        assert json.loads(response.get_data())["error"] == "temporarily_unavailable"
        assert ledger.get_credential(cid).revoked_at is None           # not claimed
    response = client.post("/revoke", data={"credential_id": cid}, headers=basic(*AUDITOR))
    assert response.status_code == 200
    assert ledger.get_credential(cid).revoked_at is not None
    assert body["credential"]["username"] not in cluster_roles(vault_env)
