"""``make demo``: a simulated CI run exchanging its OIDC token with a real broker, end to end.

DEMO ONLY. It starts the INSECURE local dev issuer (GitHub-Actions-shaped tokens) on
127.0.0.1:8099, starts ``broker serve`` (gunicorn) on embedded defaults (SQLite ledger, file
signing key, embedded replay store in ./.broker) with the demo policies in policies/demo, then
plays the CI step and the auditor through the real HTTP API, and stops everything.
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
            return s.getsockname()[1]
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
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _show(title: str, value: Any) -> None:
    console.print(Panel(Syntax(json.dumps(value, indent=2), "json", word_wrap=True), title=title,
                        title_align="left"))


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
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

    console.rule("[bold]nhi-broker demo[/bold]")
    console.print("[yellow]DEV ONLY:[/yellow] a local issuer on 127.0.0.1:8099 plays GitHub Actions' OIDC provider.")
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
        _show("7. auditor: POST /introspect", {k: info[k] for k in ("active", "sub", "run", "authz") if k in info})

        verify = subprocess.run([sys.executable, "-m", "broker.cli", "ledger", "verify"], env=env,
                                capture_output=True, text=True)
        console.print(Panel(verify.stdout.strip() or verify.stderr.strip(), title="8. broker ledger verify",
                            title_align="left"))
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


def main() -> None:
    try:
        sys.exit(run())
    except Exception as exc:  # noqa: BLE001 - the demo reports and fails
        console.print(f"[red]demo failed:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
