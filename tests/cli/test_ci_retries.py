"""`broker exchange` retries what is safe to retry, run as a subprocess against the real broker:
real `503`s (its Redis starts only once the command has been refused), a real `429` rate limit,
and refusals that must not be retried (counted in the broker's ledger)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.cli.test_ci_exchange import clean_env, run_exchange
from tests.support.oauth import AUDIENCE
from tests.support.retries import (
    events_for_token,
    outage_end_after,
    rate_limited_broker,
    sha,
    use_up_the_window,
)
from tests.support.server import REPO

RETRY_LINE = "broker exchange: attempt "


def token_file(broker, tmp_path) -> tuple[str, str]:
    """A fresh attestation in a file (so every attempt sends this one token) and its path."""
    token = broker.dev_issuer.mint_github(audience=AUDIENCE)
    path = tmp_path / "attestation"
    path.write_text(token)
    return token, str(path)


def test_a_503_is_retried_with_the_same_attestation_and_the_job_gets_its_credential(redis_down, tmp_path):
    broker, redis = redis_down.broker, redis_down.redis
    token, path = token_file(broker, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "exchange", "--target", "deploy-api", "--scope", "deploy",
         "--subject-token-file", path, "--format", "json"],
        env=clean_env(BROKER_URL=broker.url), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines = []
    assert process.stderr is not None
    for line in process.stderr:            # Redis comes back once the command was refused
        lines.append(line.rstrip("\n"))
        if line.startswith(RETRY_LINE):
            redis.start()
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, lines
    assert lines[0].startswith("broker exchange: attempt 1/5 failed: temporarily_unavailable: ")
    assert "(HTTP 503; reason backend_unavailable); retrying in 1.0s" in lines[0]
    assert all(line.startswith(RETRY_LINE) for line in lines)          # nothing but retry lines
    assert token not in "\n".join(lines)
    assert '"credential_id"' in stdout
    assert outage_end_after(broker, token)["last_attempt"]["attestation_sha256"] == sha(token)
    assert [e.type for e in events_for_token(broker, token)] == ["mint"]


@pytest.mark.parametrize("case, args, env, attempts", [
    ("options", ["--retries", "10", "--retry-deadline", "2.5"], {}, (2, 3)),
    ("environment", [], {"BROKER_EXCHANGE_RETRIES": "1"}, (2,)),
    ("off", ["--retries", "0"], {"BROKER_EXCHANGE_RETRIES": "3"}, (1,)),
])
def test_when_the_budget_runs_out_the_one_error_line_names_the_attempts(redis_down, tmp_path, case,
                                                                        args, env, attempts):
    broker = redis_down.broker
    _, path = token_file(broker, tmp_path)
    started = time.monotonic()
    result = run_exchange(["--target", "deploy-api", "--subject-token-file", path, *args],
                          clean_env(BROKER_URL=broker.url, **env))
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr         # a refusal, as without retries
    *retries, error = result.stderr.strip().splitlines()
    made = len(retries) + 1
    assert made in attempts and all(line.startswith(RETRY_LINE) for line in retries)
    assert error.startswith("broker exchange: error: temporarily_unavailable: ")
    assert error.endswith(f"(HTTP 503; reason backend_unavailable; {made} attempt{'s' if made > 1 else ''})")
    assert took < 10                 # (the deadline case: 2.5 s of retries, plus starting Python)
    assert result.stdout == ""


def test_a_refusal_that_is_not_safe_to_retry_is_sent_once(http_broker, tmp_path):
    token, path = token_file(http_broker, tmp_path)
    result = run_exchange(["--target", "no-such-api", "--subject-token-file", path],
                          clean_env(BROKER_URL=http_broker.url))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("broker exchange: error: invalid_target: ") and "attempt" not in line
    (deny,) = events_for_token(http_broker, token)          # the broker saw it once
    assert deny.type == "deny" and deny.details["error"] == "invalid_target"


@pytest.fixture(scope="module")
def once_a_minute(tmp_path_factory, dev_issuer):
    with rate_limited_broker(tmp_path_factory.mktemp("rate-60s"), dev_issuer, "1/60s") as broker:
        yield broker


def test_a_429_whose_retry_after_outlasts_the_deadline_gives_up_at_once(once_a_minute, tmp_path):
    token, path = token_file(once_a_minute, tmp_path)
    use_up_the_window(once_a_minute, 60, room=10)           # Retry-After will be ≥ 10 s
    started = time.monotonic()
    result = run_exchange(["--target", "deploy-api", "--subject-token-file", path,
                           "--retry-deadline", "5"], clean_env(BROKER_URL=once_a_minute.url))
    took = time.monotonic() - started
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()            # no retry: it would end past 5 s
    assert line.startswith("broker exchange: error: slow_down: ")
    assert "(HTTP 429; reason rate_limited; retry after " in line
    assert line.endswith("; 1 attempt)")
    assert took < 5
    assert events_for_token(once_a_minute, token) == []     # refused before any ledger work


@pytest.mark.parametrize("args, env", [
    (["--retries", "-1"], {}), (["--retries", "two"], {}), (["--retry-deadline", "-3"], {}),
    ([], {"BROKER_EXCHANGE_RETRIES": "many"}), ([], {"BROKER_EXCHANGE_RETRY_DEADLINE": "nan"}),
])
def test_bad_retry_options_are_usage_errors(args, env):
    result = run_exchange(["--target", "deploy-api", "--broker", "http://127.0.0.1:9", *args],
                          clean_env(**env))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--retr" in result.stderr.strip().splitlines()[-1]
