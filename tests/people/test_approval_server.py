"""The whole path against the real server (gunicorn, two workers, SQLite ledger): the SDK and
`broker exchange` wait for a person, who approves with `broker approvals approve` or the API;
a delegation granted with `broker delegations grant` and revoked with `... revoke`."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time

import requests

from broker.sdk import Broker, BrokerError
from tests.support.oauth import AUDIENCE, GRANT, JWT_TYPE, bearer, claims_of
from tests.support.people import AGENT, Job, agent_job, id_token
from tests.support.server import REPO

_CI_PREFIXES = ("GITHUB_", "ACTIONS_", "GITLAB_", "BROKER_", "RUNNER_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CI_PREFIXES) and k != "CI"}
    return {**env, **extra}


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def wait_for_request(ledger, run_id: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = ledger.search_events(type="approval_requested", run_id=run_id, limit=5)
        if events:
            return events[-1].details["approval_id"]
        time.sleep(0.1)
    raise AssertionError("no approval request was recorded")


def person_env(http_broker, tmp_path, email: str) -> dict[str, str]:
    path = tmp_path / f"{email}.idtoken"
    path.write_text(id_token(http_broker.human_idp, email))
    return clean_env(BROKER_URL=http_broker.url, BROKER_HUMAN_ID_TOKEN_FILE=str(path))


def test_the_sdk_waits_for_a_person_who_approves_from_the_terminal(http_broker, tmp_path):
    job = Job.start(http_broker.dev_issuer)
    result: dict = {}

    def ci_side():
        try:
            broker = Broker(http_broker.url, subject_token=job.attestation, approval_timeout=60)
            cred = broker.credential("prod-api", scope="migrate")
            result["claims"] = claims_of(cred.access_token)
            cred.close()
        except BrokerError as exc:               # surfaced in the assertion below
            result["error"] = exc

    thread = threading.Thread(target=ci_side, daemon=True)
    thread.start()
    approval_id = wait_for_request(http_broker.ledger, job.run_id)

    env = person_env(http_broker, tmp_path, "alice@acme.example")
    listed = cli(["approvals", "list"], env)
    assert listed.returncode == 0, listed.stderr
    assert approval_id in listed.stdout
    shown = cli(["approvals", "show", approval_id], env)
    assert job.claims["sha"] in shown.stdout and "prod-migrations" in shown.stdout
    self_env = person_env(http_broker, tmp_path, "octocat@acme.example")
    refused = cli(["approvals", "approve", approval_id], self_env)
    assert refused.returncode == 1 and "not_self" in refused.stderr
    approved = cli(["approvals", "approve", approval_id, "--reason", "reviewed the migration"], env)
    assert approved.returncode == 0, approved.stderr
    assert "approved" in approved.stdout

    thread.join(timeout=30)
    assert "error" not in result, result.get("error")
    assert result["claims"]["authz"]["type"] == "human"
    assert result["claims"]["authz"]["approvers"] == ["alice@acme.example"]
    assert result["claims"]["authz"]["approval_id"] == approval_id
    events = [e for e in http_broker.ledger.search_events(run_id=job.run_id, limit=100)]
    types = [e.type for e in events]
    assert types[0] == "approval_requested" and "approved" in types and types.count("mint") == 1
    assert all(e.details.get("approval_id") == approval_id for e in events if e.type != "revoke")
    assert http_broker.ledger.verify().ok


def test_broker_exchange_in_github_actions_receives_its_credential_after_approval(http_broker, tmp_path):
    dev = http_broker.dev_issuer
    fixed = dev.github_claims()          # one run: every ID token the job asks for shares these
    dev.token_claims = {k: fixed[k] for k in ("run_id", "sha", "workflow_sha", "job_workflow_sha")}
    try:
        env = clean_env(ACTIONS_ID_TOKEN_REQUEST_URL=dev.token_url,
                        ACTIONS_ID_TOKEN_REQUEST_TOKEN=dev.request_token, BROKER_URL=http_broker.url,
                        BROKER_AUDIENCE=AUDIENCE)
        proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "exchange", "--target", "prod-api",
                                 "--scope", "migrate", "--format", "env", "--approval-timeout", "60"],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            approval_id = wait_for_request(http_broker.ledger, fixed["run_id"])
            time.sleep(1.5)                                # let it poll (fresh ID tokens) at least once
            response = requests.post(f"{http_broker.url}/v1/approvals/{approval_id}/approve",
                                     headers=bearer(id_token(http_broker.human_idp, "bob@acme.example")),
                                     timeout=10)
            assert response.status_code == 200, response.text
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    finally:
        dev.token_claims = {}
    assert proc.returncode == 0, err
    assert f"waiting for a person to approve: {http_broker.url}/approvals/{approval_id}" in err
    exported = dict(line[len("export "):].split("=", 1) for line in out.splitlines())
    claims = claims_of(shlex.split(exported["BROKER_ACCESS_TOKEN"])[0])
    assert claims["authz"]["approvers"] == ["bob@acme.example"]
    polls = [e for e in http_broker.ledger.search_events(type="deny", run_id=fixed["run_id"], limit=50)]
    assert polls and all(e.details["error"] == "authorization_pending" for e in polls)
    assert len({e.details["attestation_sha256"] for e in polls}) == len(polls)   # a fresh token each poll


def test_a_delegation_over_http_granted_and_revoked_from_the_terminal(http_broker, tmp_path):
    env = person_env(http_broker, tmp_path, "alice@acme.example")
    granted = cli(["delegations", "grant", "--agent", AGENT, "--target", "reports-api",
                   "--scope", "reports:read", "--ttl", "30m", "--token-out", str(tmp_path / "dlg")], env)
    assert granted.returncode == 0, granted.stderr
    token = (tmp_path / "dlg").read_text().strip()
    assert (tmp_path / "dlg").stat().st_mode & 0o777 == 0o600
    delegation_id = claims_of(token)["jti"]

    def exchange():
        return requests.post(f"{http_broker.url}/token", data={
            "grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE,
            "actor_token": agent_job(http_broker.dev_issuer).attestation(), "actor_token_type": JWT_TYPE,
            "audience": "reports-api"}, timeout=10)

    minted = exchange()
    assert minted.status_code == 200, minted.text
    claims = claims_of(minted.json()["access_token"])
    assert claims["sub"] == "alice@acme.example" and claims["act"]["sub"] == AGENT
    # the agent's SDK: its own attestation is the actor token, fresh for each mint
    agent = Broker(http_broker.url, subject_token=agent_job(http_broker.dev_issuer).attestation)
    with agent.act_for(token, "reports-api", scope="reports:read") as cred:
        assert claims_of(cred.access_token)["authz"]["grant_id"] == delegation_id
        cred.renew()                                         # a second fresh actor attestation
        held = cred.credential_id
    listed = cli(["delegations", "list", "--json"], env)
    assert delegation_id in listed.stdout
    assert http_broker.ledger.get_credential(held).revoked_at is not None    # revoked on exit
    revoked = cli(["delegations", "revoke", delegation_id], env)
    assert revoked.returncode == 0 and "1 credential(s) revoked" in revoked.stdout
    after = exchange()
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


def test_the_cli_reports_a_bad_id_token(http_broker, tmp_path):
    path = tmp_path / "forged"
    path.write_text(id_token(http_broker.human_idp, "alice@acme.example", forge=True))
    result = cli(["approvals", "list", "--id-token-file", str(path)], clean_env(BROKER_URL=http_broker.url))
    assert result.returncode == 4 and "invalid_token" in result.stderr
    assert path.read_text() not in result.stderr + result.stdout
    missing = cli(["approvals", "list"], clean_env(BROKER_URL=http_broker.url))
    assert missing.returncode == 2 and "no ID token" in missing.stderr
