"""The CI step and SDK as a new user meets them (issue 16): a refused exchange stops a `set -e`
job, the client runs from a standard-library-only install, step-scoped outputs, reason codes and
ledger event ids in errors, and attestation detection that asks for the broker's audience."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from broker.sdk import Broker
from tests.cli.test_ci_exchange import clean_env, github_env, parse_github_file
from tests.support.oauth import AUDIENCE, claims_of
from tests.support.server import REPO

BLOCKED = ("flask", "werkzeug", "jwt", "cryptography", "authlib", "yaml", "click", "rich",
           "gunicorn", "psycopg", "psycopg_pool", "redis", "requests", "hvac")
CLIENT_ONLY = (f"import runpy, sys\nfor name in {BLOCKED!r}: sys.modules[name] = None\n"
               "sys.argv = ['broker.sdk.exchange', *sys.argv[1:]]\n"
               "runpy.run_module('broker.sdk.exchange', run_name='__main__')\n")


def _token_file(http_broker, tmp_path, name="token"):
    path = tmp_path / name
    path.write_text(http_broker.dev_issuer.mint_github(audience=AUDIENCE))
    return path


def test_the_documented_gitlab_form_stops_a_set_e_job_and_the_one_line_form_does_not(
        http_broker, tmp_path):
    token = _token_file(http_broker, tmp_path)
    command = (f"{shlex.quote(sys.executable)} -m broker.cli exchange --target no-such-target "
               f"--broker {shlex.quote(http_broker.url)} --subject-token-file {shlex.quote(str(token))}")
    documented = f'set -e\nBROKER_ENV="$({command})"\neval "$BROKER_ENV"\necho REACHED\n'
    result = subprocess.run(["sh", "-c", documented], env=clean_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "REACHED" not in result.stdout
    assert "invalid_target" in result.stderr
    one_line = f'set -e\neval "$({command})"\necho REACHED\n'   # what the docs used to show
    result = subprocess.run(["sh", "-c", one_line], env=clean_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "REACHED" in result.stdout


def test_the_client_runs_with_the_standard_library_alone(http_broker, tmp_path):
    token = _token_file(http_broker, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY, "--target", "reports-api", "--scope", "reports:read",
         "--broker", http_broker.url, "--subject-token-file", str(token), "--format", "dotenv"],
        env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert values["BROKER_SCOPE"] == "reports:read" and values["BROKER_CREDENTIAL_ID"]


def test_format_output_keeps_the_credential_out_of_github_env(http_broker, tmp_path):
    env = github_env(http_broker, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "broker.sdk.exchange", "--target", "reports-api", "--format", "output"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "github_env").read_text() == "EXISTING=1\n"        # untouched
    outputs = parse_github_file((tmp_path / "github_output").read_text())
    token = outputs["access-token"]
    assert claims_of(token)["jti"] == outputs["credential-id"]
    assert result.stdout.splitlines()[0] == f"::add-mask::{token}"         # masked first
    assert token not in result.stderr


def test_a_refusal_names_its_reason_and_its_ledger_event(http_broker, tmp_path):
    token = _token_file(http_broker, tmp_path)
    args = [sys.executable, "-m", "broker.cli", "exchange", "--target", "reports-api",
            "--broker", http_broker.url, "--subject-token-file", str(token)]
    assert subprocess.run(args, env=clean_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=60).returncode == 0
    replay = subprocess.run(args, env=clean_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert replay.returncode == 1
    line = replay.stderr.strip()
    assert "invalid_grant: subject_token has already been used" in line
    seq = int(line.rsplit("ledger event ", 1)[1].rstrip(")"))
    deny = http_broker.ledger.search_events(type="deny", after_seq=seq - 1, limit=1)[0]
    assert deny.seq == seq and deny.details["reason_code"] in line


def test_detection_asks_for_the_audience_of_the_broker_it_is_given_to(http_broker, monkeypatch):
    dev = http_broker.dev_issuer
    for name in [k for k in os.environ if k.startswith(("BROKER_", "GITLAB", "GITHUB"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", dev.token_url)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", dev.request_token)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    broker = Broker("https://broker.internal", subject_token=Broker.detect_attestation())
    assert claims_of(broker._attestation())["aud"] == "https://broker.internal"
    assert claims_of(Broker("https://b.example")._attestation())["aud"] == "https://b.example"
    pinned = Broker("https://b.example", subject_token=Broker.detect_attestation("explicit"))
    assert claims_of(pinned._attestation())["aud"] == "explicit"
    # ...and against the real broker: the README example as written, with its audience
    real = Broker(http_broker.url, audience=AUDIENCE, subject_token=Broker.detect_attestation())
    with real.credential("reports-api", scope="reports:read") as cred:
        assert cred.scope == ("reports:read",)
