"""Test wiring for the gateway's seams, and the real gateway process.

:class:`StaticAuthenticator` is the *test* Authenticator: it maps a test token to a SCRAM role
created in the throwaway cluster. It stands in for the broker's token verification (phase B),
not for PostgreSQL, which is always the real server.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.gateway.config import ListenerConfig
from broker.gateway.login import INVALID_PASSWORD, Authorized, LoginRefused

REPO = Path(__file__).resolve().parents[2]

# One set per test session (this module is imported once, as tests.gateway.gw_support).
ROLE = "gw_app"
ROLE_PASSWORD = "app-" + secrets.token_urlsafe(12)
TOKEN = "tok-" + secrets.token_urlsafe(24)
CREDENTIAL = "cred-" + secrets.token_hex(6)


def tokens(**overrides: Any) -> dict[str, Any]:
    """The test token map: TOKEN → the SCRAM role gw_app in database gwdb."""
    entry = {"credential_id": CREDENTIAL, "username": CREDENTIAL, "upstream_user": ROLE,
             "upstream_password": ROLE_PASSWORD, "dbname": "gwdb", "expires_in": 3600,
             "record": {"principal": "repo:acme/app", "run": {"run_id": "42"}}}
    entry.update(overrides)
    return {TOKEN: entry}


class StaticAuthenticator:
    """``options["tokens"]``: token → {credential_id, username, upstream_user, upstream_password,
    dbname, expires_in, record}."""

    def __init__(self, listener: ListenerConfig, options: dict[str, Any]) -> None:
        self.tokens = options["tokens"]
        self.started = time.time()

    def authenticate(self, username: str, password: str, database: str, client_addr: str) -> Authorized:
        entry = next((e for token, e in self.tokens.items()
                      if hmac.compare_digest(token.encode(), password.encode())), None)
        if entry is None:
            raise LoginRefused(INVALID_PASSWORD, "invalid credential")
        if username != entry.get("username", entry["credential_id"]):
            raise LoginRefused("28000", "user name does not match the credential")
        return Authorized(credential_id=entry["credential_id"], upstream_user=entry["upstream_user"],
                          upstream_password=entry["upstream_password"],
                          upstream_dbname=entry.get("dbname", database),
                          expires_at=self.started + float(entry.get("expires_in", 3600)),
                          record=entry.get("record", {}))


def make_authenticator(listener: ListenerConfig, options: dict[str, Any]) -> StaticAuthenticator:
    return StaticAuthenticator(listener, options)


@dataclass
class GatewayProcess:
    config_path: Path
    records_path: Path
    spool_dir: Path
    port: int
    proc: subprocess.Popen | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "broker.gateway.devserver", str(self.config_path)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.config_path.with_suffix(".log"), "ab"),
                                     text=True, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"gateway did not start: {self.log()}")

    def log(self) -> str:
        path = self.config_path.with_suffix(".log")
        return path.read_text() if path.exists() else ""

    def end_credential(self, credential_id: str, reason: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"end_credential": credential_id, "reason": reason}) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        return [json.loads(line) for line in self.records_path.read_text().splitlines() if line]

    def wait_records(self, predicate, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"records did not arrive: {len(records)} so far")
            time.sleep(0.05)

    def usage(self, credential_id: str | None = None) -> list[dict[str, Any]]:
        """Usage records, de-duplicated on line_key as the ledger does."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.records():
            if r["type"] == "usage" and (credential_id is None or r["credential_id"] == credential_id):
                seen.setdefault(r["line_key"], r)
        return sorted(seen.values(), key=lambda r: (r["connection_id"], r["seq"]))


def write_config(tmp: Path, *, port: int, upstream_port: int, tokens: dict[str, Any], workers: int = 1,
                 gateway: dict[str, Any] | None = None, sink: str = "jsonl") -> GatewayProcess:
    spool = tmp / "spool"
    records = tmp / ("records.jsonl" if sink == "jsonl" else "records.sqlite")
    block = {"listen": f"127.0.0.1:{port}", "upstream": {"host": "127.0.0.1", "port": upstream_port,
                                                          "sslmode": "prefer"},
             "audit": "required", "parameters": "hashed"}
    block.update(gateway or {})
    config = {"spool_dir": str(spool), "workers": workers, "shutdown_grace": 5,
              "listeners": [{"target": "testdb", "gateway": block}],
              "authenticator": "tests.gateway.gw_support:make_authenticator",
              "authenticator_options": {"tokens": tokens},
              "sink": {"kind": sink, "path": str(records)}}
    path = tmp / "gateway.json"
    path.write_text(json.dumps(config))
    return GatewayProcess(path, records, spool, port)


@contextlib.contextmanager
def running(gw: GatewayProcess) -> Iterator[GatewayProcess]:
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
