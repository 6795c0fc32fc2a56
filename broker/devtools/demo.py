"""``make demo``: a simulated CI run exchanging its OIDC token with a real broker, end to end.

DEMO ONLY. It starts the INSECURE local dev issuer (GitHub-Actions-shaped tokens) on
127.0.0.1:8099, starts ``broker serve`` (gunicorn) on embedded defaults (SQLite ledger, file
signing key, embedded replay store in ./.broker) with the demo policies in policies/demo, then
plays the CI step and the auditor through the real HTTP API, and stops everything.

When the optional ``demo`` extra is installed (``pip install '.[demo]'``: the PyPI package
``pgserver``, which ships real PostgreSQL binaries, and psycopg), it also starts an embedded
PostgreSQL in a temporary folder as the ``payments-db`` target — logging every statement as
``jsonlog``, SCRAM passwords required for minted roles — and tells the rest of the story: the
CI run gets its own database login, runs an ``UPDATE`` with it, the database's log is ingested,
and the auditor asks "who ran this?" and is told the run and the policy. Without the extra
that part is skipped and the demo still succeeds.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax

DEV_ISSUER_PORT = 8099
DEMO_AUDIENCE = "nhi-broker-demo"
AUDITOR = ("auditor", "demo-auditor-secret")      # public demo secret, see policies/demo/demo.yaml
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

console = Console(highlight=False)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def _http(method: str, url: str, *, form: dict[str, str] | None = None,
          auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if form is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body else None


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _show(title: str, value: Any) -> None:
    console.print(Panel(Syntax(json.dumps(value, indent=2), "json", word_wrap=True), title=title,
                        title_align="left"))


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with status {proc.returncode}")
        try:
            status, _ = _http("GET", f"{base}/healthz")
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError("broker did not become healthy in time")


def _gateway_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker gateway exited ({process.returncode}); see demo-gateway.log "
                               "in the state dir")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("broker gateway did not start listening in time")


class EmbeddedPostgres:
    """DEMO ONLY: a throwaway PostgreSQL from the ``pgserver`` package, on 127.0.0.1 with SCRAM
    passwords for every role but the local superuser, every statement logged as jsonlog with
    its duration and command tag (docs/postgres.md's settings)."""

    def __init__(self) -> None:
        import tempfile

        self.root = tempfile.mkdtemp(prefix="nhb-demo-pg-")
        self.pgdata = os.path.join(self.root, "data")
        self.log_dir = os.path.join(self.pgdata, "nhb_log")
        self.port = _free_port(0)
        self.server: Any = None

    def start(self) -> EmbeddedPostgres:
        import pgserver
        import psycopg
        from psycopg import sql

        os.chmod(self.root, 0o755)
        self.server = pgserver.get_server(  # type: ignore[attr-defined]  # untyped re-export
            self.pgdata, cleanup_mode=None)   # initdb + start
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            for name, value in (("logging_collector", "on"), ("log_destination", "jsonlog"),
                                ("log_directory", "nhb_log"), ("log_file_mode", "0644"),
                                ("log_statement", "none"), ("log_min_duration_statement", "0"),
                                ("log_connections", "on"),
                                ("log_disconnections", "on"), ("log_timezone", "UTC"),
                                ("password_encryption", "scram-sha-256")):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name),
                                                                         sql.Literal(value)))
        with open(os.path.join(self.pgdata, "pg_hba.conf"), "w") as hba:
            hba.write("local all all trust\n"
                      "host all postgres 127.0.0.1/32 trust\n"
                      "host all all 127.0.0.1/32 scram-sha-256\n")
        socket_dir = self.server.get_postmaster_info().socket_dir
        pg_ctl = pgserver.pg_ctl  # type: ignore[attr-defined]  # untyped re-export
        pg_ctl(["-w", "-m", "fast", "-o", f"-h 127.0.0.1 -p {self.port} -k {socket_dir}",
                "-l", os.path.join(self.pgdata, "log"), "restart"],
               pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)
        with psycopg.connect(self.admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE payments")
            conn.execute("CREATE ROLE payments_app NOLOGIN")
        with psycopg.connect(self.admin_dsn("payments"), autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint)")
            conn.execute("INSERT INTO accounts VALUES (1, 'acme-treasury', 1000000), (2, 'acme-ops', 5000)")
            conn.execute("GRANT SELECT, UPDATE ON accounts TO payments_app")
        return self

    def admin_dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        import shutil

        if self.server is not None:
            try:
                import pgserver

                pgserver.pg_ctl(["-w", "-m", "fast", "stop"],  # type: ignore[attr-defined]
                                pgdata=self.server.pgdata,
                                user=self.server.system_user, timeout=60)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _embedded_postgres() -> EmbeddedPostgres | None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")   # platformdirs, via pgserver
    logging.getLogger("pgserver").setLevel(logging.CRITICAL)           # its failures are reported below
    try:
        import pgserver  # noqa: F401
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        console.print("[yellow]PostgreSQL part skipped:[/yellow] install the demo extra "
                      "(pip install '.\\[demo]') for the embedded PostgreSQL target.")
        return None
    pg = EmbeddedPostgres()
    try:
        return pg.start()
    except Exception as exc:  # noqa: BLE001 - the rest of the demo still runs
        console.print(f"[yellow]PostgreSQL part skipped:[/yellow] the embedded PostgreSQL did not "
                      f"start ({exc})")
        pg.stop()
        return None


def _mask(credential: dict[str, Any]) -> dict[str, Any]:
    password = credential.get("password", "")
    shown = dict(credential)
    shown["password"] = password[:4] + "..."
    shown["dsn"] = credential["dsn"].replace(password, password[:4] + "...")
    return shown


def _postgres_story(base: str, issuer: Any, env: dict[str, str], pg: EmbeddedPostgres) -> bool:
    """Steps 9-13: a database login for the run, an UPDATE, the log ingested, who ran it."""
    import psycopg

    status, body = _http("GET", f"{issuer.issuer}/token?audience={DEMO_AUDIENCE}",
                         headers={"Authorization": f"Bearer {issuer.request_token}"})
    form = {"grant_type": GRANT, "subject_token": body["value"], "subject_token_type": JWT_TYPE,
            "audience": "payments-db", "scope": "payments:write"}
    status, body = _http("POST", f"{base}/token", form=form)
    if status != 200:
        console.print(f"[red]database credential refused[/red]: {body}")
        return False
    credential = body["credential"]
    _show("9. POST /token audience=payments-db → a PostgreSQL login of its own (password shown cut)",
          {"credential_id": body["credential_id"], "credential": _mask(credential)})

    statement = "UPDATE accounts SET balance = balance - 2500 WHERE owner = 'acme-ops'"
    with psycopg.connect(credential["dsn"], autocommit=True) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        user = row[0] if row else "?"
        conn.execute(statement)
    console.print(Panel(f"connected as [bold]{user}[/bold] and ran:\n  {statement}",
                        title="10. the CI job runs its migration step with exactly that credential",
                        title_align="left"))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:                # the logging collector writes promptly
        logged = [f for f in os.listdir(pg.log_dir) if f.endswith(".json")]
        if any(statement in open(os.path.join(pg.log_dir, f), errors="replace").read() for f in logged):
            break
        time.sleep(0.2)
    ingest = subprocess.run([sys.executable, "-m", "broker.cli", "ingest", "postgres-log", pg.log_dir,
                             "--format", "jsonlog"], env=env, capture_output=True, text=True)
    console.print(Panel((ingest.stdout or ingest.stderr).strip(),
                        title=f"11. broker ingest postgres-log {pg.log_dir}", title_align="left"))
    if ingest.returncode != 0:
        return False

    status, found = _http("GET", f"{base}/v1/usage?" + urllib.parse.urlencode(
        {"statement": "UPDATE accounts"}), auth=AUDITOR)
    hits = [{k: h.get(k) for k in ("statement", "command_tag", "duration_ms", "at", "credential_id",
                                   "principal", "run", "authorizer")}
            for h in (found or {}).get("usage", [])]
    _show("12. auditor: who ran \"UPDATE accounts\"?  GET /v1/usage?statement=UPDATE accounts", hits)
    if status != 200 or not any(h["credential_id"] == body["credential_id"] for h in hits):
        return False

    status, _ = _http("POST", f"{base}/revoke", form={"credential_id": body["credential_id"]}, auth=AUDITOR)
    try:
        psycopg.connect(credential["dsn"], connect_timeout=5).close()
        after = "login still works (unexpected)"
    except psycopg.OperationalError:
        after = "login refused: the role is gone"
    console.print(Panel(f"POST /revoke → {status}; {after}", title="13. auditor revokes the credential",
                        title_align="left"))
    return status == 200 and after.startswith("login refused")


def gateway_policy(pg: EmbeddedPostgres, port: int) -> str:
    """DEMO ONLY: the demo's gateway target, generated because the embedded PostgreSQL's port is
    only known at run time (docs/gateway.md has the format)."""
    return f"""# generated by `make demo` (broker/devtools/demo.py): the embedded PostgreSQL, via the gateway
kind: target
name: payments-db-gw
type: postgres
admin_dsn_env: DEMO_PAYMENTS_DB_ADMIN_DSN
grants: []
scope_grants: {{"payments:write": [payments_app]}}
max_ttl: 10m
gateway:
  listen: 127.0.0.1:{port}
  upstream: {{host: 127.0.0.1, port: {pg.port}, dbname: payments, sslmode: disable}}
---
kind: policy
name: payments-main-migrate-via-gateway
issuer: dev-gha
targets: [payments-db-gw]
match:
  repository: acme/payments
  ref: refs/heads/main
scopes: [payments:write]
max_ttl: 5m
"""


def _gateway_story(base: str, issuer: Any, env: dict[str, str], port: int, first: int) -> bool:
    """The audit trail on the connection: the CI job logs in through `broker gateway` with its
    credential as the password; the gateway's record answers "who ran it"; a revocation cuts
    the open session."""
    import psycopg

    status, body = _http("GET", f"{issuer.issuer}/token?audience={DEMO_AUDIENCE}",
                         headers={"Authorization": f"Bearer {issuer.request_token}"})
    form = {"grant_type": GRANT, "subject_token": body["value"], "subject_token_type": JWT_TYPE,
            "audience": "payments-db-gw", "scope": "payments:write"}
    status, body = _http("POST", f"{base}/token", form=form)
    if status != 200:
        console.print(f"[red]gateway credential refused[/red]: {body}")
        return False
    credential, credential_id = body["credential"], body["credential_id"]
    shown = dict(credential)
    shown["password"] = credential["password"][:16] + "… (the access token itself)"
    shown["dsn"] = credential["dsn"].replace(credential["password"], "<access token>")
    _show(f"{first}. POST /token audience=payments-db-gw → a login through the gateway", shown)

    statement = "UPDATE accounts SET balance = balance + 100 WHERE owner = 'acme-ops'"
    conn = psycopg.connect(credential["dsn"], autocommit=True, connect_timeout=10)
    row = conn.execute("SELECT current_user").fetchone()
    user = row[0] if row else "?"
    conn.execute(statement)
    console.print(Panel(f"connected to the gateway on 127.0.0.1:{port} as [bold]{credential['username']}"
                        f"[/bold] (the database sees {user}) and ran:\n  {statement}",
                        title=f"{first + 1}. the CI job, through broker gateway", title_align="left"))

    hits: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not hits:
        status, found = _http("GET", f"{base}/v1/usage?" + urllib.parse.urlencode(
            {"statement": "balance + 100"}), auth=AUDITOR)
        hits = [h for h in (found or {}).get("usage", []) if h.get("credential_id") == credential_id]
        time.sleep(0.2)
    _show(f"{first + 2}. auditor: who ran it? GET /v1/usage — the gateway's own record",
          [{k: h.get(k) for k in ("statement", "command_tag", "duration_ms", "credential_id",
                                  "principal", "run", "authorizer")} for h in hits])
    if not hits:
        conn.close()
        return False

    status, _ = _http("POST", f"{base}/revoke", form={"credential_id": credential_id}, auth=AUDITOR)
    started = time.monotonic()
    cut = None
    while time.monotonic() - started < 5:
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            cut = f"the open session was closed after {time.monotonic() - started:.2f}s: " \
                  f"{str(exc).strip().splitlines()[0]}"
            break
        time.sleep(0.05)
    conn.close()
    console.print(Panel(f"POST /revoke → {status}; {cut or 'the session is still open (unexpected)'}",
                        title=f"{first + 3}. auditor revokes it: the connection ends", title_align="left"))
    return status == 200 and cut is not None


def run() -> int:
    os.environ["BROKER_INSECURE_DEV_ISSUER"] = "1"   # this is the demo: allow the dev issuer
    from broker.devtools.dev_issuer import DevIssuer

    repo = os.getcwd()
    policy_dir = os.path.join(repo, "policies", "demo")
    broker_port = _free_port(8080)
    base = f"http://127.0.0.1:{broker_port}"
    env = {**os.environ, "BROKER_POLICY_DIR": policy_dir, "BROKER_ISSUER": base,
           "BROKER_STATE_DIR": os.environ.get("BROKER_STATE_DIR", os.path.join(repo, ".broker"))}
    env.pop("BROKER_DATABASE_URL", None)
    env.pop("BROKER_REDIS_URL", None)
    pg = _embedded_postgres()
    gateway_port = _free_port(0)
    if pg is not None:
        env["DEMO_PAYMENTS_DB_ADMIN_DSN"] = pg.admin_dsn("payments")
        if _gateway_available():
            # the demo's policies plus its generated gateway target, in the state dir
            import shutil

            policy_dir = os.path.join(env["BROKER_STATE_DIR"], "demo-policies")
            shutil.rmtree(policy_dir, ignore_errors=True)
            shutil.copytree(os.path.join(repo, "policies", "demo"), policy_dir)
            with open(os.path.join(policy_dir, "gateway.yaml"), "w") as fh:
                fh.write(gateway_policy(pg, gateway_port))
            env["BROKER_POLICY_DIR"] = policy_dir
        else:
            console.print("[yellow]Gateway part skipped:[/yellow] install the gateway extra "
                          "(pip install '.\\[gateway]') for broker gateway's event loop.")

    console.rule("[bold]nhi-broker demo[/bold]")
    console.print("[yellow]DEV ONLY:[/yellow] a local issuer on 127.0.0.1:8099 plays GitHub Actions' "
                  "OIDC provider.")
    issuer = DevIssuer(port=DEV_ISSUER_PORT)
    issuer.start()
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--host", "127.0.0.1", "--port", str(broker_port),
         "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(base, broker)
        console.print(f"broker (gunicorn) listening on {base}; ledger: SQLite in {env['BROKER_STATE_DIR']}")

        # 1. The CI step asks its platform for an OIDC token, as a GitHub Actions step would
        #    through ACTIONS_ID_TOKEN_REQUEST_URL.
        status, body = _http("GET", f"{issuer.issuer}/token?audience={DEMO_AUDIENCE}",
                             headers={"Authorization": f"Bearer {issuer.request_token}"})
        assert status == 200, body
        attestation = body["value"]
        _show("1. the CI job's OIDC token (claims of the attestation)", _claims(attestation))

        # 2. RFC 8693 token exchange for the reports-api target.
        form = {"grant_type": GRANT, "subject_token": attestation, "subject_token_type": JWT_TYPE,
                "audience": "reports-api", "scope": "reports:read"}
        status, body = _http("POST", f"{base}/token", form=form)
        if status != 200:
            console.print(f"[red]exchange failed[/red]: {body}")
            return 1
        credential_id = body["credential_id"]
        shown = {**body, "access_token": body["access_token"][:24] + "…"}
        _show("2. POST /token → 200", shown)
        _show("3. the minted credential's claims (signed ES256 by the broker)", _claims(body["access_token"]))

        # 3. The same attestation again: refused (single use) and recorded.
        status, refusal = _http("POST", f"{base}/token", form=form)
        _show(f"4. replaying the same attestation → {status}", refusal)

        # 4. A target no policy grants: refused and recorded.
        status, fresh = _http("GET", f"{issuer.issuer}/token?audience={DEMO_AUDIENCE}",
                              headers={"Authorization": f"Bearer {issuer.request_token}"})
        status, refusal = _http("POST", f"{base}/token", form={**form, "subject_token": fresh["value"],
                                                               "audience": "billing-api", "scope": ""})
        _show(f"5. asking for billing-api (no policy allows it) → {status}", refusal)

        # 5. The auditor's view of the credential.
        status, record = _http("GET", f"{base}/v1/credentials/{credential_id}", auth=AUDITOR)
        assert status == 200, record
        _show(f"6. auditor: GET /v1/credentials/{credential_id}", record)

        # 6. Introspection (RFC 7662), recorded too.
        status, info = _http("POST", f"{base}/introspect", form={"token": body["access_token"]}, auth=AUDITOR)
        _show("7. auditor: POST /introspect",
              {k: info[k] for k in ("active", "sub", "run", "authz") if k in info})

        if pg is not None and not _postgres_story(base, issuer, env, pg):
            console.print("[red]the PostgreSQL part of the demo failed[/red]")
            return 1
        step = 14 if pg is not None else 8
        if pg is not None and env["BROKER_POLICY_DIR"] != os.path.join(repo, "policies", "demo"):
            gateway_log = open(os.path.join(env["BROKER_STATE_DIR"], "demo-gateway.log"), "wb")
            gateway = subprocess.Popen([sys.executable, "-m", "broker.cli", "gateway", "--workers", "2"],
                                       env=env, stdout=gateway_log, stderr=subprocess.STDOUT)
            try:
                _wait_listening(gateway_port, gateway)
                if not _gateway_story(base, issuer, env, gateway_port, step):
                    console.print("[red]the gateway part of the demo failed[/red]")
                    return 1
            finally:
                gateway.terminate()
                try:
                    gateway.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    gateway.kill()
                gateway_log.close()
            step += 4

        # The auditor keeps a signed checkpoint outside the broker; verify proves the ledger
        # only grew since (and recomputes the chain and the Merkle tree).
        status, checkpoint = _http("GET", f"{base}/v1/ledger/checkpoint", auth=AUDITOR)
        assert status == 200, checkpoint
        checkpoint_file = os.path.join(env["BROKER_STATE_DIR"], "demo-checkpoint.json")
        with open(checkpoint_file, "w") as fh:
            json.dump(checkpoint, fh)
        _show(f"{step}. auditor: GET /v1/ledger/checkpoint (signed; kept outside the broker)",
              {k: checkpoint[k] for k in ("tree_size", "root_hash", "timestamp", "key_id")
               if k in checkpoint})
        verify = subprocess.run([sys.executable, "-m", "broker.cli", "ledger", "verify",
                                 "--checkpoint", checkpoint_file], env=env, capture_output=True, text=True)
        console.print(Panel(verify.stdout.strip() or verify.stderr.strip(),
                            title=f"{step + 1}. broker ledger verify --checkpoint", title_align="left"))
        if verify.returncode != 0:
            return 1
        console.rule("[green]demo complete[/green]")
        return 0
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            broker.kill()
        issuer.stop()
        if pg is not None:
            pg.stop()


def main() -> None:
    try:
        sys.exit(run())
    except Exception as exc:  # noqa: BLE001 - the demo reports and fails
        console.print(f"[red]demo failed:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
