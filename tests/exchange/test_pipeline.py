"""The orchestrator without HTTP: ``exchange()`` on a context, one ledger event per attempt."""
from __future__ import annotations

import pytest

from broker import errors
from broker.exchange.pipeline import ATTESTATION, PARENT, exchange, subject_kind
from broker.exchange.request import TOKEN_TYPE_JWT, ExchangeRequest
from broker.targets import IssuedCredential

AUDIENCE = "nhi-broker-test"


def request(token: str, target: str = "reports-api", **kw) -> ExchangeRequest:
    return ExchangeRequest(subject_token=token, subject_token_type=TOKEN_TYPE_JWT, target=target, **kw)


def test_a_mint_is_the_attempts_one_event(ctx, dev_issuer):
    before = ctx.ledger.head()[0]
    result = exchange(ctx, request(dev_issuer.mint_github(audience=AUDIENCE), scopes=("reports:read",)))
    events = ctx.ledger.search_events(after_seq=before)
    assert [e.type for e in events] == ["mint"]
    assert events[0].credential_id == result.credential_id and result.scope == "reports:read"
    assert ctx.signer.verify(result.access_token)["jti"] == result.credential_id


@pytest.mark.parametrize("target, scopes, error, reason", [
    ("payroll-db", None, errors.TargetRefused, "unknown_target"),
    ("reports-api", ("reports:admin",), errors.ScopeRefused, "scope_not_allowed"),
    ("billing-api", None, errors.PolicyDenied, "no_matching_policy"),
], ids=["unknown target", "wider scope", "no policy"])
def test_each_refusal_is_one_deny_with_its_code(ctx, dev_issuer, target, scopes, error, reason):
    before = ctx.ledger.head()[0]
    with pytest.raises(error) as caught:
        exchange(ctx, request(dev_issuer.mint_github(audience=AUDIENCE), target=target, scopes=scopes))
    assert caught.value.reason == reason
    events = ctx.ledger.search_events(after_seq=before)
    assert [e.type for e in events] == ["deny"]
    assert events[0].details["error"] == caught.value.error
    assert events[0].details["reason_code"] == reason


def test_a_replay_is_refused_and_recorded(ctx, dev_issuer):
    token = dev_issuer.mint_github(audience=AUDIENCE)
    exchange(ctx, request(token))
    before = ctx.ledger.head()[0]
    with pytest.raises(errors.GrantRefused):
        exchange(ctx, request(token))
    assert [e.type for e in ctx.ledger.search_events(after_seq=before)] == ["deny"]


def test_a_bug_in_a_target_kind_is_a_server_error_and_one_deny(ctx, dev_issuer):
    class Broken:
        kind = "jwt"

        def issue(self, _request) -> IssuedCredential:
            raise KeyError("a bug")

        def revoke(self, _record) -> None:
            return None

    ctx.issuers["jwt"] = Broken()
    before = ctx.ledger.head()[0]
    with pytest.raises(errors.InternalError):
        exchange(ctx, request(dev_issuer.mint_github(audience=AUDIENCE)))
    events = ctx.ledger.search_events(after_seq=before)
    assert [e.type for e in events] == ["deny"]
    assert events[0].details["error"] == "server_error" and "KeyError" in events[0].details["reason"]


def test_an_unrecordable_mint_issues_nothing(ctx, dev_issuer):
    undone = []

    class Undoable:
        kind = "jwt"

        def issue(self, _request) -> IssuedCredential:
            return IssuedCredential(undo=lambda: undone.append(True))

        def revoke(self, _record) -> None:
            return None

    def down(*args, **kwargs):
        raise errors.LedgerUnavailable("ledger database error during record_mint")

    ctx.issuers["jwt"] = Undoable()
    ctx.ledger.record_mint = down
    with pytest.raises(errors.LedgerUnavailable) as caught:
        exchange(ctx, request(dev_issuer.mint_github(audience=AUDIENCE)))
    assert caught.value.description == "the ledger is unavailable; nothing was issued"
    assert undone == [True]


def test_the_subject_kind_is_decided_from_the_request(ctx, dev_issuer):
    root = exchange(ctx, request(dev_issuer.mint_github(audience=AUDIENCE)))
    assert subject_kind(ctx, request(dev_issuer.mint_github(audience=AUDIENCE))) == ATTESTATION
    assert subject_kind(ctx, request(root.access_token)) == PARENT
