"""SDK parts that need no broker: import without Flask, attestation detection, connection
parameters, and approval polling (against a stub: the real broker has no approvals yet)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from broker.sdk import AttestationUnavailable, Broker, BrokerError, Credential, _Issued, detect_attestation
from tests.support.oauth import claims_of
from tests.support.server import REPO

BLOCKED = ("flask", "werkzeug", "jwt", "cryptography", "authlib", "yaml", "click", "rich",
           "gunicorn", "psycopg", "psycopg_pool", "redis", "requests")


def test_the_sdk_imports_with_only_the_standard_library():
    code = ("import sys\n"
            f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
            "import broker.sdk\n"
            "from broker.sdk import Broker, BrokerError, Credential\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{BLOCKED!r} and sys.modules[m] is not None)\n"
            "assert not loaded, loaded\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_detection_order_and_sources(tmp_path, dev_issuer):
    token_file = tmp_path / "token"
    token_file.write_text(" file-token\n")
    k8s = tmp_path / "k8s-token"
    k8s.write_text("k8s-token")
    github = {"ACTIONS_ID_TOKEN_REQUEST_URL": dev_issuer.token_url,
              "ACTIONS_ID_TOKEN_REQUEST_TOKEN": dev_issuer.request_token, "GITHUB_ACTIONS": "true"}

    found = detect_attestation("https://broker.example", subject_token_file=token_file, environ=github)
    assert (found.source, found.token) == ("file", "file-token")
    found = detect_attestation("https://broker.example", environ=github, k8s_token_file=k8s)
    assert found.source == "github-actions"
    assert claims_of(found.token)["aud"] == "https://broker.example"
    assert claims_of(detect_attestation(environ={**github, "BROKER_AUDIENCE": "aud-from-env"}).token)["aud"] \
        == "aud-from-env"
    found = detect_attestation(environ={"GITLAB_CI": "true", "BROKER_ID_TOKEN": "gl-token"}, k8s_token_file=k8s)
    assert (found.source, found.token) == ("gitlab-ci", "gl-token")
    found = detect_attestation(environ={"MY_TOKEN": "mine"}, gitlab_token_var="MY_TOKEN")
    assert found.token == "mine"
    found = detect_attestation(environ={}, k8s_token_file=k8s)
    assert (found.source, found.token) == ("kubernetes", "k8s-token")
    assert "token=" not in repr(found)          # the token is not in the repr

    for environ, message in [
        ({"GITHUB_ACTIONS": "true"}, "id-token: write"),
        ({**github, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"}, "HTTP 401"),
        ({"GITLAB_CI": "true"}, "BROKER_ID_TOKEN is empty"),
        ({}, "no attestation found"),
    ]:
        with pytest.raises(AttestationUnavailable) as caught:
            detect_attestation(environ=environ, k8s_token_file=tmp_path / "absent")
        assert message in (caught.value.description or "")
        assert caught.value.error == "attestation_unavailable"
    with pytest.raises(AttestationUnavailable):
        detect_attestation(subject_token_file=tmp_path / "absent")


def issued(secret=None, **fields):
    now = time.time()
    return _Issued(**{"credential_id": "01hzzzzzzzzzzzzzzzzzzzzzzz", "access_token": "eyJ.secret.sig",
                      "issued_at": now, "expires_at": now + 300, "scope": ("read",), "parent_id": None,
                      "secret": secret, **fields})


def test_connection_parameters_come_from_the_credential():
    secret = {"type": "postgres", "username": "nhb_01hz", "password": "pw-secret", "host": "db.internal",
              "port": 5433, "dbname": "payments", "sslmode": "verify-full", "dsn": "postgresql://..."}
    cred = Credential(Broker("https://broker.example"), issued(secret), target="payments-db",
                      reissue=lambda: issued(secret))
    assert cred.connection_params() == {
        "host": "db.internal", "port": 5433, "dbname": "payments", "user": "nhb_01hz",
        "password": "pw-secret", "sslmode": "verify-full",
        "application_name": "nhi-broker:01hzzzzzzzzzzzzzzzzzzzzzzz"}
    assert "pw-secret" not in repr(cred) and "eyJ.secret.sig" not in repr(cred)
    jwt_only = Credential(Broker("https://broker.example"), issued(), target="reports-api",
                          reissue=issued)
    with pytest.raises(BrokerError) as caught:
        jwt_only.connection_params()
    assert caught.value.error == "invalid_target"


def test_broker_url_is_checked():
    for url in ("ftp://x", "https://user:pw@broker.example", "not a url"):
        with pytest.raises(ValueError):
            Broker(url)


class _ApprovalStub(BaseHTTPRequestHandler):
    """A STUB, not the broker: it answers `authorization_pending` twice, then a token. The
    real broker gains human approvals in issue 7; this checks only the SDK's polling."""
    script: list[tuple[int, dict]] = []
    forms: list[dict] = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers["Content-Length"])
        self.forms.append({k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()})
        status, body = self.script.pop(0)
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApprovalStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ApprovalStub.forms = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_pending_approval_is_polled_with_the_approval_id(stub):
    pending = {"error": "authorization_pending", "error_description": "waiting for approval",
               "approval_id": "ap-1", "interval": 0}
    _ApprovalStub.script = [(400, pending), (400, pending), (200, {
        "access_token": "eyJ.x.y", "credential_id": "01hzzzzzzzzzzzzzzzzzzzzzzz", "expires_in": 60,
        "scope": "read", "token_type": "Bearer"})]
    cred = Broker(stub, subject_token="attestation").credential("payments-db", scope="read")
    assert cred.credential_id == "01hzzzzzzzzzzzzzzzzzzzzzzz"
    assert [f.get("approval_id") for f in _ApprovalStub.forms] == [None, "ap-1", "ap-1"]
    assert all(f["subject_token"] == "attestation" for f in _ApprovalStub.forms)


def test_slow_down_past_the_approval_timeout_raises(stub):
    _ApprovalStub.script = [(400, {"error": "slow_down", "approval_id": "ap-2", "interval": 0})]
    with pytest.raises(BrokerError) as caught:
        Broker(stub, subject_token="a", approval_timeout=1).credential("payments-db")
    assert caught.value.error == "slow_down" and caught.value.body["approval_id"] == "ap-2"
