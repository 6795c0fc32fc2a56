"""Helpers for the API tests: a policy set around a real dev issuer, apps, real servers."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

AUDIENCE = "nhi-broker-test"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUDITOR = ("auditor", "auditor-secret-0123456789")
INTROSPECTOR = ("introspector", "introspector-secret-0123456789")
REPO = Path(__file__).resolve().parents[2]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def policy_yaml(issuer_url: str) -> str:
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: target
name: reports-api
type: jwt
audience: https://reports.internal
max_ttl: 15m
---
kind: target
name: billing-api
type: jwt
max_ttl: 1h
---
kind: policy
name: payments-reports
issuer: gha
targets: [reports-api]
match:
  repository: acme/payments
  ref: {{glob: "refs/heads/*"}}
scopes: [reports:read, reports:write]
max_ttl: 10m
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit, introspect, revoke]
---
kind: client
name: {INTROSPECTOR[0]}
secret_sha256: "{sha(INTROSPECTOR[1])}"
may: [introspect]
"""


def write_policies(directory: Path, issuer_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "broker.yaml").write_text(policy_yaml(issuer_url))
    return directory


def exchange_form(subject_token: str, **overrides: Any) -> dict[str, str]:
    form = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
            "audience": "reports-api", "scope": "reports:read"}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_broker(env: dict[str, str], *, workers: int = 2, timeout: float = 30.0,
                   log_path: Path | None = None) -> Iterator[str]:
    """Start `broker serve` (gunicorn) as a real process; yield its base URL.

    With ``log_path``, everything the server prints is kept there (tests search it for secrets).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "BROKER_ISSUER": base, **env}
    with contextlib.ExitStack() as stack:
        # A file, never a pipe: a chatty server must not block on a full pipe buffer.
        out = stack.enter_context(open(log_path, "wb") if log_path is not None
                                  else tempfile.TemporaryFile())
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    out.flush()
                    out.seek(0)
                    printed = out.read().decode(errors="replace")
                    raise RuntimeError(f"broker exited early ({proc.returncode}):\n{printed}")
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("broker did not become healthy")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
