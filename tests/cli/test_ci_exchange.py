"""`broker exchange`, the CI step, run as a subprocess against the real HTTP server, in a
GitHub-Actions-shaped environment (the dev issuer's `/token` plays GitHub's ID-token endpoint),
in GitLab CI and Kubernetes shapes, and with every output format and failure."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
import requests

from tests.support.oauth import AUDIENCE, AUDITOR, basic
from tests.support.server import REPO, free_port

_CI_PREFIXES = ("GITHUB_", "ACTIONS_", "GITLAB_", "BROKER_", "RUNNER_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CI or broker variables (the suite may itself run
    in CI), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CI_PREFIXES) and k != "CI"}
    return {**env, **extra}


def run_exchange(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", "exchange", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def github_env(http_broker, tmp_path, **extra: str) -> dict[str, str]:
    dev = http_broker.dev_issuer
    (tmp_path / "github_env").write_text("EXISTING=1\n")
    (tmp_path / "github_output").write_text("")
    return clean_env(**{"GITHUB_ACTIONS": "true", "CI": "true",
                        "ACTIONS_ID_TOKEN_REQUEST_URL": dev.token_url,
                        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": dev.request_token,
                        "GITHUB_ENV": str(tmp_path / "github_env"),
                        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
                        "BROKER_URL": http_broker.url, "BROKER_AUDIENCE": AUDIENCE, **extra})


def parse_github_file(text: str) -> dict[str, str]:
    """GitHub's `NAME<<DELIMITER` blocks (and plain `NAME=value` lines)."""
    values, lines, i = {}, text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1:end])
            i = end + 1
        else:
            if "=" in line:
                name, value = line.split("=", 1)
                values[name] = value
            i += 1
    return values


def introspect(http_broker, token):
    return requests.post(f"{http_broker.url}/introspect", data={"token": token},
                         headers=basic(*AUDITOR), timeout=10).json()


def test_github_actions_writes_github_env_and_masks_secrets_first(http_broker, tmp_path):
    result = run_exchange(["--target", "deploy-api", "--scope", "deploy"], github_env(http_broker, tmp_path))
    assert result.returncode == 0, result.stderr
    env_values = parse_github_file((tmp_path / "github_env").read_text())
    token = env_values["BROKER_ACCESS_TOKEN"]
    assert env_values["EXISTING"] == "1"                               # appended, not replaced
    assert introspect(http_broker, token)["active"] is True
    assert env_values["BROKER_CREDENTIAL_ID"] == introspect(http_broker, token)["credential_id"]
    assert env_values["BROKER_TARGET"] == "deploy-api" and env_values["BROKER_SCOPE"] == "deploy"
    assert re.fullmatch(r"[0-9]{10}", env_values["BROKER_EXPIRES_AT"])

    assert result.stdout.splitlines()[0] == f"::add-mask::{token}"    # first thing printed
    assert token not in result.stdout.replace(f"::add-mask::{token}", "")
    assert token not in result.stderr
    assert env_values["BROKER_CREDENTIAL_ID"] in result.stderr        # the one-line summary

    outputs = parse_github_file((tmp_path / "github_output").read_text())
    assert outputs == {"credential-id": env_values["BROKER_CREDENTIAL_ID"], "target": "deploy-api",
                       "scope": "deploy", "expires-at": env_values["BROKER_EXPIRES_AT"]}
    assert re.search(r"^BROKER_ACCESS_TOKEN<<ghadelimiter_[0-9a-f-]{36}$",
                     (tmp_path / "github_env").read_text(), re.M)


def test_github_actions_with_a_format_still_masks_before_printing(http_broker, tmp_path):
    result = run_exchange(["--target", "deploy-api", "--format", "env"], github_env(http_broker, tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    token = parse_github_file((tmp_path / "github_env").read_text())["BROKER_ACCESS_TOKEN"]
    first_use = next(i for i, line in enumerate(lines) if token in line and not line.startswith("::add-mask::"))
    assert lines.index(f"::add-mask::{token}") < first_use


def test_env_output_evaluates_in_a_shell(http_broker, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(http_broker.dev_issuer.mint_github(audience=AUDIENCE))
    command = (f"eval \"$({shlex.quote(sys.executable)} -m broker.cli exchange --target reports-api "
               f"--scope reports:read --broker {http_broker.url} --subject-token-file {token_file})\" "
               "&& printf '%s\\n%s\\n%s' \"$BROKER_CREDENTIAL_ID\" \"$BROKER_SCOPE\" \"$BROKER_ACCESS_TOKEN\"")
    result = subprocess.run(["bash", "-c", command], env=clean_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    credential_id, scope, token = result.stdout.split("\n")
    assert scope == "reports:read"
    assert introspect(http_broker, token)["credential_id"] == credential_id


@pytest.mark.parametrize("fmt", ["dotenv", "json"])
def test_dotenv_and_json_formats(http_broker, tmp_path, fmt):
    token_file = tmp_path / "token"
    token_file.write_text(http_broker.dev_issuer.mint_github(audience=AUDIENCE))
    result = run_exchange(["--target", "deploy-api", "--format", fmt, "--subject-token-file", str(token_file)],
                          clean_env(BROKER_URL=http_broker.url))
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        body = json.loads(result.stdout)
        token, credential_id = body["access_token"], body["credential_id"]
        assert body["target"] == "deploy-api" and body["parent_id"] is None
    else:
        values = dict(line.split("=", 1) for line in result.stdout.splitlines())
        token, credential_id = values["BROKER_ACCESS_TOKEN"], values["BROKER_CREDENTIAL_ID"]
    assert introspect(http_broker, token)["credential_id"] == credential_id


def test_gitlab_ci_and_kubernetes_attestations(http_broker, tmp_path):
    dev = http_broker.dev_issuer
    result = run_exchange(["--target", "deploy-api", "--format", "json"],
                          clean_env(GITLAB_CI="true", CI="true", BROKER_URL=http_broker.url,
                                    BROKER_ID_TOKEN=dev.mint_github(audience=AUDIENCE)))
    assert result.returncode == 0, result.stderr
    assert introspect(http_broker, json.loads(result.stdout)["access_token"])["active"] is True
    token_file = tmp_path / "projected-token"
    token_file.write_text(dev.mint_github(audience=AUDIENCE))
    result = run_exchange(["--target", "deploy-api", "--format", "json", "--k8s-token-file", str(token_file)],
                          clean_env(BROKER_URL=http_broker.url))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case, args, env, code, line", [
    ("refused scope", ["--target", "deploy-api", "--scope", "admin"], "github", 1,
     "::error title=broker exchange::invalid_scope: requested scope is not allowed (HTTP 400; reason scope_not_allowed; ledger event "),
    ("unknown target", ["--target", "nope"], "github", 1, "invalid_target: unknown target"),
    ("no broker url", ["--target", "deploy-api"], "bare", 2,
     "broker exchange: error: no broker URL: pass --broker or set BROKER_URL"),
    ("no attestation", ["--target", "deploy-api", "--broker", "http://127.0.0.1:9"], "bare", 2,
     "broker exchange: error: no attestation: no attestation found"),
    ("missing id-token permission", ["--target", "deploy-api"], "github-no-permission", 2,
     "id-token: write"),
    ("broker unreachable", ["--target", "deploy-api"], "github-unreachable", 3, "cannot reach the broker"),
])
def test_failures_are_one_readable_line_and_a_non_zero_exit(http_broker, tmp_path, case, args, env, code, line):
    environ = {
        "github": lambda: github_env(http_broker, tmp_path),
        "github-no-permission": lambda: {k: v for k, v in github_env(http_broker, tmp_path).items()
                                         if not k.startswith("ACTIONS_ID_TOKEN")},
        "github-unreachable": lambda: github_env(http_broker, tmp_path,
                                                 BROKER_URL=f"http://127.0.0.1:{free_port()}"),
        "bare": lambda: clean_env(BROKER_K8S_TOKEN_FILE=str(tmp_path / "absent")),
    }[env]()
    result = run_exchange(args, environ)
    assert result.returncode == code
    *retries, last = result.stderr.strip().splitlines()
    # one error line, after one line per retry (only what is safe to retry: the broker not there)
    assert all(r.startswith("broker exchange: attempt ") for r in retries), result.stderr
    assert bool(retries) == (case == "broker unreachable")
    assert line in last and "Traceback" not in result.stderr
    assert result.stdout == ""
    if env == "github":
        assert (tmp_path / "github_env").read_text() == "EXISTING=1\n"


def test_the_composite_actions_script_runs_the_command(http_broker, tmp_path):
    """action.yml's exchange step, run by bash as the runner would (the install step is
    replaced by a wrapper around this checkout's Python)."""
    import yaml

    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert set(action["inputs"]) >= {"target", "scope", "broker-url", "audience", "ttl"}
    assert "id-token: write" in action["description"]
    step = next(s for s in action["runs"]["steps"] if s.get("id") == "exchange")
    assert "${{" not in step["run"]                       # inputs only through the environment
    runner_temp = tmp_path / "runner"
    wrapper = runner_temp / "nhi-broker" / "bin" / "python"     # the action's client-only venv
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    wrapper.chmod(0o755)
    env = github_env(http_broker, tmp_path, RUNNER_TEMP=str(runner_temp), NHB_TARGET="reports-api",
                     NHB_SCOPE="reports:read", NHB_TTL="5m")
    result = subprocess.run(["bash", "-c", step["run"]], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    values = parse_github_file((tmp_path / "github_env").read_text())
    assert values["BROKER_SCOPE"] == "reports:read" and values["BROKER_TARGET"] == "reports-api"
    assert 290 <= int(values["BROKER_EXPIRES_AT"]) - time.time() <= 301
    assert parse_github_file((tmp_path / "github_output").read_text())["credential-id"] == \
        values["BROKER_CREDENTIAL_ID"]
