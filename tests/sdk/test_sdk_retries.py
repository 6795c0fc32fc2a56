"""The SDK retries what is safe to retry, against the real broker: real `503`s (its Redis is not
there until the test starts it, after the first refusal), a real rate limit (`429` with
`Retry-After`), and real refusals that must not be retried (counted in the broker's ledger)."""
from __future__ import annotations

import logging
import time

import pytest

from broker.sdk import Broker, BrokerError, BrokerUnreachable, RetryAttempt
from broker.sdk.retry import RETRY_AFTER_CAP, backoff, parse_retry_after, retry_delay
from tests.support.oauth import AUDIENCE
from tests.support.relay import Relay
from tests.support.retries import events_for_token, outage_end_after, rate_limited_broker, use_up_the_window
from tests.support.server import free_port


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "broker.sdk" and r.levelno == logging.INFO and "retrying in" in r.getMessage()]


def test_a_503_is_retried_with_the_same_subject_token_until_the_dependency_is_back(redis_down, caplog):
    broker, redis = redis_down.broker, redis_down.redis
    token = broker.dev_issuer.mint_github(audience=AUDIENCE)
    notices: list[RetryAttempt] = []

    def on_retry(notice: RetryAttempt) -> None:
        notices.append(notice)
        redis.start()                 # the dependency comes back only after a real refusal

    sdk = Broker(broker.url, subject_token=token, on_retry=on_retry)   # one string: one token
    with caplog.at_level(logging.INFO, logger="broker.sdk"):
        cred = sdk.credential("deploy-api", scope="deploy")
    try:
        first = notices[0]
        assert (first.attempt, first.max_attempts) == (1, 5)
        assert (first.error.status, first.error.error, first.error.reason) == \
            (503, "temporarily_unavailable", "backend_unavailable")
        assert first.error.retry_after == 1 and first.delay >= 1.0        # Retry-After honoured
        lines = retry_lines(caplog)
        assert len(lines) == len(notices)
        assert "attempt 1/5 failed: temporarily_unavailable" in lines[0] and "HTTP 503" in lines[0]
        assert not any(token in r.getMessage() for r in caplog.records)
        # The broker refused an attempt with this very token, then minted from it: once.
        assert outage_end_after(broker, token)["last_attempt"]["attestation_sha256"]
        (mint,) = [e for e in events_for_token(broker, token) if e.type == "mint"]
        assert mint.credential_id == cred.credential_id
    finally:
        cred.close()


def test_when_the_budget_runs_out_the_last_error_names_the_attempts(redis_down):
    broker = redis_down.broker
    sdk = Broker(broker.url, subject_token=broker.dev_issuer.mint_github(audience=AUDIENCE),
                 retries=2, retry_deadline=30)
    notices: list[RetryAttempt] = []
    sdk.on_retry = notices.append
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        sdk.credential("deploy-api")
    took = time.monotonic() - started
    assert (caught.value.status, caught.value.error, caught.value.attempts) == (503, "temporarily_unavailable", 3)
    assert str(caught.value).endswith("(HTTP 503; reason backend_unavailable; 3 attempts)")
    assert [n.attempt for n in notices] == [1, 2]
    assert 2.0 <= took < 10                                 # two waits of Retry-After: 1


def test_the_retry_deadline_bounds_the_whole_request(redis_down):
    broker = redis_down.broker
    sdk = Broker(broker.url, subject_token=broker.dev_issuer.mint_github(audience=AUDIENCE),
                 retries=100, retry_deadline=2.5)
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        sdk.credential("deploy-api")
    took = time.monotonic() - started
    assert caught.value.status == 503
    assert caught.value.attempts in (2, 3)      # at 0 s, 1 s (and 2 s): the next wait ends past it
    assert took < 2.5 + 1.0                     # a retry is started only if its wait ends before it


@pytest.mark.parametrize("case", ["unknown target", "replayed", "scope not allowed"])
def test_refusals_that_are_not_safe_to_retry_are_sent_once(http_broker, caplog, case):
    token = http_broker.dev_issuer.mint_github(audience=AUDIENCE)
    target, scope, error = {"unknown target": ("no-such-api", None, "invalid_target"),
                            "replayed": ("deploy-api", None, "invalid_grant"),
                            "scope not allowed": ("deploy-api", "admin", "invalid_scope")}[case]
    notices: list[RetryAttempt] = []
    sdk = Broker(http_broker.url, subject_token=token, on_retry=notices.append)
    if case == "replayed":
        sdk.credential("deploy-api").close()
    with caplog.at_level(logging.INFO, logger="broker.sdk"), pytest.raises(BrokerError) as caught:
        sdk.credential(target, scope=scope)
    assert caught.value.error == error and caught.value.status == 400
    assert caught.value.attempts is None and "attempt" not in str(caught.value)
    assert notices == [] and retry_lines(caplog) == []
    denies = [e for e in events_for_token(http_broker, token) if e.type == "deny"]
    assert len(denies) == 1                                 # the broker saw the request once
    assert denies[0].details["error"] == error


def test_a_broker_that_is_not_listening_is_retried_then_unreachable():
    sdk = Broker(f"http://127.0.0.1:{free_port()}", subject_token="x", retries=3, retry_deadline=30)
    notices: list[RetryAttempt] = []
    sdk.on_retry = notices.append
    with pytest.raises(BrokerUnreachable) as caught:
        sdk.credential("deploy-api")
    assert caught.value.attempts == 4 and [n.attempt for n in notices] == [1, 2, 3]
    assert "cannot reach the broker" in str(caught.value) and str(caught.value).endswith("(4 attempts)")
    with pytest.raises(BrokerUnreachable) as caught:                  # retries=0: off
        Broker(sdk.url, subject_token="x", retries=0).credential("deploy-api")
    assert caught.value.attempts == 1


@pytest.fixture(scope="module")
def every_three_seconds(tmp_path_factory, dev_issuer):
    """A broker that allows this address one token request per 3-second window."""
    with rate_limited_broker(tmp_path_factory.mktemp("rate-3s"), dev_issuer, "1/3s") as broker:
        yield broker


def test_a_429_is_retried_after_its_retry_after(every_three_seconds, caplog):
    broker = every_three_seconds
    token = broker.dev_issuer.mint_github(audience=AUDIENCE)
    notices: list[RetryAttempt] = []
    sdk = Broker(broker.url, subject_token=token, on_retry=notices.append, retry_deadline=10)
    use_up_the_window(broker, 3, room=2.5)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="broker.sdk"):
        cred = sdk.credential("deploy-api")
    took = time.monotonic() - started
    cred.close()
    first = notices[0]
    assert (first.error.status, first.error.error) == (429, "slow_down")
    assert first.error.retry_after is not None and first.error.retry_after >= 2
    assert first.delay >= first.error.retry_after and took >= first.delay
    assert "HTTP 429" in retry_lines(caplog)[0]
    assert [e.type for e in events_for_token(broker, token)] == ["mint"]   # a 429 costs no event


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(every_three_seconds):
    broker = every_three_seconds
    sdk = Broker(broker.url, subject_token=broker.dev_issuer.mint_github(audience=AUDIENCE),
                 retry_deadline=1.5)
    use_up_the_window(broker, 3, room=2.5)
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        sdk.credential("deploy-api")
    assert time.monotonic() - started < 1.0                 # did not wait for Retry-After
    assert (caught.value.status, caught.value.error, caught.value.attempts) == (429, "slow_down", 1)
    assert "retry after" in str(caught.value) and "1 attempt" in str(caught.value)


def test_the_backoff_is_full_jitter_under_a_cap_and_never_shorter_than_retry_after():
    assert [backoff(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5, 6, 9)] == [0.25, 0.5, 1, 2, 4, 5, 5]
    assert backoff(3, rng=lambda: 0.0) == 0.0
    assert retry_delay(1, 1.0, rng=lambda: 1.0) == 1.0
    assert retry_delay(6, 1.0, rng=lambda: 1.0) == 5.0
    assert retry_delay(1, 3600.0, rng=lambda: 1.0) == RETRY_AFTER_CAP
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None and parse_retry_after("-5") == 0.0


def test_retry_options_are_checked():
    for bad in ({"retries": -1}, {"retries": 1.5}, {"retries": True}, {"retry_deadline": -1},
                {"retry_deadline": float("nan")}):
        with pytest.raises(ValueError):
            Broker("http://127.0.0.1:9", **bad)
    b = Broker("http://127.0.0.1:9")
    assert (b.retries, b.retry_deadline, b.on_retry) == (4, 30.0, None)


def test_an_answer_lost_after_the_mint_is_retried_and_refused_never_minted_twice(http_broker, caplog):
    """A timeout after the request was sent is retried with the same token: when the broker
    had minted, the retry is refused as a replay — at most a refusal, never a second credential."""
    relay = Relay(int(http_broker.url.rsplit(":", 1)[1]), drop_answers=1).start()
    token = http_broker.dev_issuer.mint_github(audience=AUDIENCE)
    notices: list[RetryAttempt] = []
    sdk = Broker(f"http://127.0.0.1:{relay.port}", subject_token=token, timeout=2,
                 on_retry=notices.append)
    try:
        with caplog.at_level(logging.INFO, logger="broker.sdk"), pytest.raises(BrokerError) as caught:
            sdk.credential("deploy-api")
    finally:
        relay.stop()
    (lost,) = notices
    assert isinstance(lost.error, BrokerUnreachable) and lost.error.sent
    assert "no answer from the broker" in str(lost.error) and lost.error.status is None
    assert (caught.value.error, caught.value.reason, caught.value.attempts) == ("invalid_grant", "replayed", 2)
    assert [e.type for e in events_for_token(http_broker, token)] == ["mint", "deny"]
    assert any(r.levelno == logging.WARNING and "may have issued a credential" in r.getMessage()
               for r in caplog.records)
