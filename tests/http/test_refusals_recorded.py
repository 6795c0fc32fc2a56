"""Refused client authentication is recorded and slowed down; every client value that reaches
the ledger or a log line is bounded, and none can split or forge a log line."""
from __future__ import annotations

import base64
import logging

import pytest

from tests.support.oauth import AUDIENCE, AUDITOR, INTROSPECTOR, basic, exchange_form
from tests.support.standards import app, client, ledger, make_app, policy_dir  # noqa: F401 (fixtures)


def _new_events(ledger, before):
    return list(ledger.iter_events(before + 1))


@pytest.mark.parametrize("case, path, headers, form, status, error", [
    ("no credentials", "/introspect", {}, {"token": "x"}, 401, "invalid_client"),
    ("wrong secret", "/introspect", basic(AUDITOR[0], "guess-1"), {"token": "x"}, 401,
     "invalid_client"),
    ("unknown client", "/revoke", basic("mallory", "guess"), {"token": "x"}, 401, "invalid_client"),
    ("malformed header", "/introspect", {"Authorization": "Basic !!!"}, {"token": "x"}, 401,
     "invalid_client"),
    ("no permission", "/revoke", basic(*INTROSPECTOR), {"token": "x"}, 403, "access_denied"),
    ("malformed request", "/revoke", basic(*AUDITOR), {"token": "x", "credential_id": "y"}, 400,
     "invalid_request"),
    ("missing token", "/introspect", basic(*AUDITOR), {}, 400, "invalid_request"),
    ("self-revoke with a foreign token", "/revoke", {}, {"token": "a.b.c"}, 401, "invalid_client"),
])
def test_every_refused_introspect_and_revoke_leaves_one_event(client, ledger, case, path,
                                                             headers, form, status, error):
    before = ledger.count()
    response = client.post(path, data=form, headers=headers,
                           environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error
    events = _new_events(ledger, before)
    assert len(events) == 1, case
    event = events[0]
    assert event.type == path.strip("/")
    assert event.details["result"] == "refused" and event.details["error"] == error
    assert event.details["reason"] and event.details["client_addr"] == "198.51.100.7"
    presented = {"wrong secret": AUDITOR[0], "unknown client": "mallory",
                 "no permission": INTROSPECTOR[0], "malformed request": AUDITOR[0],
                 "missing token": AUDITOR[0]}.get(case)
    assert event.details.get("client") == presented
    for secret in ("guess-1", "guess", AUDITOR[1], INTROSPECTOR[1]):
        assert secret not in str(event.to_dict())


def test_repeated_failures_are_rate_limited(make_app):
    app = make_app(CLIENT_AUTH_FAILURE_LIMIT="3/60s")
    client, ledger = app.test_client(), app.extensions["broker"].ledger
    attacker = {"REMOTE_ADDR": "203.0.113.9"}
    for attempt in range(3):
        response = client.post("/introspect", data={"token": "x"},
                               headers=basic(AUDITOR[0], f"guess-{attempt}"), environ_base=attacker)
        assert response.status_code == 401
    before = ledger.count()
    # Over the limit even the right secret is refused, and the flood adds nothing to the ledger.
    for _ in range(5):
        response = client.post("/introspect", data={"token": "x"}, headers=basic(*AUDITOR),
                               environ_base=attacker)
        assert response.status_code == 429 and response.get_json()["error"] == "slow_down"
        assert int(response.headers["Retry-After"]) >= 1
    assert ledger.count() == before
    # Another address is not affected.
    ok = client.post("/introspect", data={"token": "x"}, headers=basic(*AUDITOR),
                     environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert ok.status_code == 200


# -- bounded records --------------------------------------------------------------------------

HUGE = 60_000


def _ledger_bytes(ledger, before):
    return sum(len(e.canonical_bytes()) for e in _new_events(ledger, before))


@pytest.mark.parametrize("case, overrides", [
    ("huge audience", {"audience": "a" * HUGE}),
    ("huge audience of a target name's alphabet", {"audience": "r" * 127 + "-" * HUGE}),
    ("huge scope", {"scope": "s" * HUGE}),
    ("many scopes", {"scope": " ".join(f"s{i}" for i in range(HUGE // 6))}),
    ("huge resource", {"resource": "https://x/" + "a" * HUGE}),
    ("huge approval_id", {"approval_id": "a" * HUGE}),
    ("huge ttl", {"ttl": "9" * HUGE}),
    ("huge subject token", {"token": "e" * HUGE}),
])
def test_one_unauthenticated_request_adds_a_small_fixed_number_of_bytes(client, ledger, case,
                                                                        overrides):
    before = ledger.count()
    token = overrides.pop("token", "a.b.c")
    response = client.post("/token", data=exchange_form(token, **overrides))
    assert response.status_code == 400
    assert _ledger_bytes(ledger, before) <= 4096, case


def test_a_deny_keeps_bounded_client_values(client, ledger, dev_issuer):
    """A request that reaches the policy (a verified attestation) with the largest values the
    parser lets through still writes a bounded event."""
    before = ledger.count()
    scope = " ".join(f"scope-{i:03d}-" + "x" * 4 for i in range(64))[:1024]
    response = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE),
                                                        audience="n" * 128, scope=scope))
    assert response.status_code == 400
    assert _ledger_bytes(ledger, before) <= 4096


def test_a_huge_client_name_is_bounded(client, ledger):
    before = ledger.count()
    raw = base64.b64encode(("c" * HUGE + ":secret").encode()).decode()
    response = client.post("/introspect", data={"token": "x"},
                           headers={"Authorization": "Basic " + raw})
    assert response.status_code == 401
    assert _ledger_bytes(ledger, before) <= 2048


# -- log injection ----------------------------------------------------------------------------

FORGED = "reports-api\r\n2026-01-01 00:00:00 INFO broker.exchange mint credential_id=forged"
CONTROLS = "x\nINFO forged\rline\x1b[2J\x85next\u2028sep\u202eevil\x00"


@pytest.mark.parametrize("case, overrides", [
    ("audience with CRLF", {"audience": FORGED}),
    ("scope with controls", {"scope": CONTROLS}),
    ("resource with CRLF", {"resource": "https://x/\r\nforged"}),
    ("approval_id with LF", {"approval_id": "abc\ndef"}),
    ("ttl with LF", {"ttl": "5\nforged"}),
])
def test_client_values_never_split_a_log_line(client, dev_issuer, caplog, case, overrides):
    caplog.set_level(logging.DEBUG, logger="broker")
    client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE),
                                             **overrides))
    _assert_single_lines(caplog)


def test_a_logged_deny_with_a_client_target_is_one_line(app, client, dev_issuer, caplog):
    """The attempt logs the target of every deny: an unknown target with controls is escaped."""
    caplog.set_level(logging.DEBUG, logger="broker")
    logging.getLogger("broker.exchange").info("deny target=%s detail=%s", FORGED, CONTROLS)
    logging.getLogger("broker.http.api").warning(FORGED)
    _assert_single_lines(caplog)
    messages = [r.getMessage() for r in caplog.records]
    assert any("\\r\\n2026-01-01" in m for m in messages)
    assert all(len(m) < 2200 for m in messages)


def test_client_names_in_log_lines_are_escaped_and_capped(make_app, caplog):
    app = make_app(CLIENT_AUTH_FAILURE_LIMIT="1/60s")
    client = app.test_client()
    caplog.set_level(logging.DEBUG, logger="broker")
    evil = basic("x\r\nCRITICAL forged " + "y" * 5000, "nope")
    for _ in range(3):
        client.post("/introspect", data={"token": "x"}, headers=evil,
                    environ_base={"REMOTE_ADDR": "10.9.8.7"})
    _assert_single_lines(caplog)
    assert any("locked" in r.getMessage() for r in caplog.records)


def _assert_single_lines(caplog):
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message, message[:200]
        assert all(ch.isprintable() for ch in message), message[:200]
        assert len(message) <= 4 * 1024
