"""People's pages in-process: sign in through the dev human IdP (authorization code + PKCE, real
HTTP to the IdP), see a request, approve it with the CSRF-protected form; cookie flags."""
from __future__ import annotations

import pytest

from broker.people.store import PeopleStore
from tests.support.people import CLIENT_ID, Job, sign_in


def test_sign_in_see_and_approve_a_request(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    pending = client.post("/token", data=job.form()).get_json()
    approval_id = pending["approval_id"]

    page = client.get(f"/approvals/{approval_id}")
    assert page.status_code == 302 and page.headers["Location"] == f"/login?next=/approvals/{approval_id}"
    done = sign_in(client, human_idp, "alice@acme.example", f"/approvals/{approval_id}")
    assert done.status_code == 302 and done.headers["Location"] == f"/approvals/{approval_id}"
    # PKCE: the broker sent a verifier the IdP checked against the challenge
    assert len(human_idp.last_token_request["code_verifier"]) >= 43
    cookie = next(v for k, v in done.headers.items() if k == "Set-Cookie" and v.startswith("nhb_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    page = client.get(f"/approvals/{approval_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert page.headers["Cache-Control"] == "no-store"
    for fact in (job.claims["sha"], "prod-api", "migrate", "10m", "prod-migrations", "alice@acme.example",
                 f"https://github.com/acme/payments/actions/runs/{job.run_id}/attempts/1"):
        assert fact in html, fact
    assert "<script" not in html and "eyJ" not in html          # no scripts, no tokens
    csrf = html.split('name="csrf_token" value="')[1].split('"')[0]

    forged = client.post(f"/approvals/{approval_id}/approve", data={"reason": "x"})
    assert forged.status_code == 403 and PeopleStore(ledger).get_approval(approval_id).status == "pending"

    approved = client.post(f"/approvals/{approval_id}/approve", data={"csrf_token": csrf, "reason": "ok"})
    assert approved.status_code == 303
    assert PeopleStore(ledger).get_approval(approval_id).status == "approved"
    event = ledger.search_events(type="approved", limit=100)[-1]
    assert event.details["via"] == "web" and event.details["approver"] == "alice@acme.example"
    assert client.post("/token", data=job.form(approval_id=approval_id)).status_code == 200

    shown = client.get(f"/approvals/{approval_id}?done=approved").get_data(as_text=True)
    assert "You approved this request" in shown and "consumed" in shown


def test_the_page_tells_the_run_s_actor_they_cannot_approve(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = client.post("/token", data=job.form()).get_json()["approval_id"]
    sign_in(client, human_idp, "octocat@acme.example")
    html = client.get(f"/approvals/{approval_id}").get_data(as_text=True)
    assert 'id="approve"' not in html and "you started this run" in html and 'id="deny"' in html


def test_a_person_sees_only_their_queue_and_can_sign_out(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = client.post("/token", data=job.form()).get_json()["approval_id"]
    sign_in(client, human_idp, "mallory@elsewhere.example")
    assert approval_id not in client.get("/approvals/").get_data(as_text=True)
    html = client.get(f"/approvals/{approval_id}").get_data(as_text=True)
    assert "you are not an approver" in html
    csrf = html.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/approvals/").status_code == 302          # signed out


def test_a_callback_without_the_flow_s_state_is_refused(client, human_idp):
    response = client.get("/login/callback?code=abc&state=forged")
    assert response.status_code == 403 and b"sign-in failed" in response.data


def test_next_is_always_a_local_path(client, human_idp):
    done = sign_in(client, human_idp, "alice@acme.example", "//evil.example/x")
    assert done.headers["Location"] == "/approvals/"


def test_the_session_cookie_is_secure_behind_https(make_app, database_url, human_idp, tmp_path):
    human_idp.add_client(CLIENT_ID, human_idp.clients[CLIENT_ID]["secret"],
                         [*human_idp.clients[CLIENT_ID]["redirect_uris"], "https://broker.test/login/callback"])
    client = make_app(DATABASE_URL=database_url, ISSUER="https://broker.test").test_client()
    start = client.get("/login")
    cookie = next(v for k, v in start.headers.items() if k == "Set-Cookie")
    assert "Secure" in cookie and "HttpOnly" in cookie
    assert (tmp_path / "state" / "session.key").stat().st_mode & 0o777 == 0o600


def test_without_a_human_idp_the_pages_say_so(tmp_path):
    from broker import create_app

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "t.yaml").write_text("kind: target\nname: t\ntype: jwt\nmax_ttl: 1h\n")
    app = create_app({"TESTING": True, "POLICY_DIR": str(tmp_path / "p"), "STATE_DIR": str(tmp_path / "s"),
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}"})
    try:
        client = app.test_client()
        assert client.get("/login").status_code == 404
        response = client.get("/v1/approvals")
        assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    finally:
        app.extensions["broker"].close()


@pytest.mark.parametrize("path", ["/approvals/", "/delegations/"])
def test_pages_need_a_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")


def test_a_missing_client_secret_stops_the_broker(tmp_path, dev_issuer, human_idp, monkeypatch):
    from broker import create_app
    from tests.support.people import approval_policy_yaml

    (tmp_path / "p").mkdir()
    text = approval_policy_yaml(dev_issuer.issuer, human_idp.issuer).replace(
        "client_secret_file: human-idp.secret", "client_secret_env: NHB_TEST_MISSING_SECRET")
    (tmp_path / "p" / "broker.yaml").write_text(text)
    monkeypatch.delenv("NHB_TEST_MISSING_SECRET", raising=False)
    with pytest.raises(RuntimeError, match="NHB_TEST_MISSING_SECRET"):
        create_app({"TESTING": True, "POLICY_DIR": str(tmp_path / "p"), "STATE_DIR": str(tmp_path / "s"),
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}"})


def test_the_example_policies_are_valid():
    import subprocess
    import sys

    from tests.support.server import REPO

    result = subprocess.run([sys.executable, "-m", "broker.cli", "policy", "check",
                             str(REPO / "policies" / "approvals")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "human-idp corp" in result.stdout


def test_broker_serve_refuses_to_start_without_the_client_secret(tmp_path, dev_issuer, human_idp):
    import os
    import subprocess
    import sys

    from tests.support.people import approval_policy_yaml
    from tests.support.server import REPO, free_port

    (tmp_path / "p").mkdir()
    text = approval_policy_yaml(dev_issuer.issuer, human_idp.issuer).replace(
        "client_secret_file: human-idp.secret", "client_secret_env: NHB_TEST_MISSING_SECRET")
    (tmp_path / "p" / "broker.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") and k != "NHB_TEST_MISSING_SECRET"}
    env.update(BROKER_POLICY_DIR=str(tmp_path / "p"), BROKER_STATE_DIR=str(tmp_path / "s"),
               BROKER_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}")
    result = subprocess.run([sys.executable, "-m", "broker.cli", "serve", "--port", str(free_port())],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to start" in result.stderr and "NHB_TEST_MISSING_SECRET" in result.stderr
