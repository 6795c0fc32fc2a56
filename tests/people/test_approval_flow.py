"""Approval before a mint, through the HTTP API (Flask test client; SQLite and PostgreSQL):
pending → a person approves with their ID token → the next poll mints; and every refusal."""
from __future__ import annotations

import pytest

from broker.people.store import PeopleStore
from tests.support.oauth import AUDITOR, basic, bearer, claims_of
from tests.support.people import CLIENT_ID, Job, id_token


def request_approval(client, job: Job, **overrides):
    response = client.post("/token", data=job.form(**overrides))
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["error"] == "authorization_pending"
    return body


def poll(client, job: Job, approval_id: str, **overrides):
    return client.post("/token", data=job.form(approval_id=approval_id, **overrides))


def approve(client, human_idp, approval_id: str, email: str, reason: str | None = None):
    data = {"reason": reason} if reason else None
    return client.post(f"/v1/approvals/{approval_id}/approve", data=data,
                       headers=bearer(id_token(human_idp, email)))


def deny(client, human_idp, approval_id: str, email: str, reason: str = "not now"):
    return client.post(f"/v1/approvals/{approval_id}/deny", data={"reason": reason},
                       headers=bearer(id_token(human_idp, email)))


def events_since(ledger, seq: int):
    return list(ledger.iter_events(seq + 1))


def test_pending_then_approved_then_minted_with_the_person_as_authorizer(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    start = ledger.head()[0]
    pending = request_approval(client, job)
    approval_id = pending["approval_id"]
    assert approval_id.startswith("apr_")
    assert pending["approval_url"] == f"http://broker.test/approvals/{approval_id}"
    assert pending["interval"] == 0 and pending["error_description"]

    # the CI side polls (a fresh attestation each time): still pending
    waiting = poll(client, job, approval_id)
    assert waiting.status_code == 400 and waiting.get_json()["error"] == "authorization_pending"

    # alice (group dba) approves with her ID token
    response = approve(client, human_idp, approval_id, "alice@acme.example", "migration reviewed")
    assert response.status_code == 200, response.get_json()
    state = response.get_json()
    assert state["status"] == "approved" and state["votes"][0]["email"] == "alice@acme.example"

    minted = poll(client, job, approval_id)
    assert minted.status_code == 200, minted.get_json()
    token = minted.get_json()["access_token"]
    claims = claims_of(token)
    policy = next(p for p in client.application.extensions["broker"].policy_set.policies
                  if p.name == "prod-migrations")
    assert claims["authz"] == {"type": "human", "approvers": ["alice@acme.example"],
                               "approval_id": approval_id,
                               "policy": {"name": "prod-migrations", "digest": policy.digest}}
    assert claims["run"]["id"] == job.run_id and claims["scope"] == "migrate"

    events = events_since(ledger, start)
    assert [e.type for e in events] == ["approval_requested", "deny", "approved", "mint"]
    assert all(e.details["approval_id"] == approval_id for e in events)
    assert events[1].details["error"] == "authorization_pending"
    assert events[2].details["approver"] == "alice@acme.example"
    assert events[2].details["reason"] == "migration reviewed"
    assert events[3].credential_id == minted.get_json()["credential_id"]
    assert events[3].authorizer == claims["authz"]
    assert ledger.verify().ok
    record = PeopleStore(ledger).get_approval(approval_id)
    assert record.status == "consumed" and record.credential_id == events[3].credential_id
    # the ID token, the client secret, the credential never reach the ledger
    blob = " ".join(str(e.to_dict()) for e in events)
    assert token not in blob and "human-idp-client-secret" not in blob and "eyJ" not in blob


def test_the_run_s_own_actor_cannot_approve_it(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)                      # the run's actor is "octocat"
    approval_id = request_approval(client, job)["approval_id"]
    before = ledger.head()[0]
    response = approve(client, human_idp, approval_id, "octocat@acme.example")
    assert response.status_code == 403
    assert response.get_json()["error"] == "access_denied"
    assert "not_self" in response.get_json()["error_description"]
    (event,) = events_since(ledger, before)
    assert event.type == "deny" and event.details["person"] == "octocat@acme.example"
    assert event.details["approval_id"] == approval_id and event.details["action"] == "approve"
    assert PeopleStore(ledger).get_approval(approval_id).status == "pending"
    # ...but octocat may stop their own run
    assert deny(client, human_idp, approval_id, "octocat@acme.example", "wrong branch").status_code == 200


def test_ci_logins_map_a_ci_login_to_its_person(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer, actor="gh-carol")
    approval_id = request_approval(client, job, audience="vault-api", scope="unseal")["approval_id"]
    response = approve(client, human_idp, approval_id, "carol@acme.example")
    assert response.status_code == 403 and "not_self" in response.get_json()["error_description"]
    assert approve(client, human_idp, approval_id, "alice@acme.example").status_code == 200


def test_without_a_username_or_mapping_not_self_fails_closed(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    response = approve(client, human_idp, approval_id, "nouser@acme.example")     # group dba, no username
    assert response.status_code == 403
    assert "cannot establish" in response.get_json()["error_description"]


def test_an_approver_outside_the_list_is_refused_and_recorded(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    before = ledger.head()[0]
    for email in ("mallory@elsewhere.example", "carol@acme.example"):   # no group, not listed
        response = approve(client, human_idp, approval_id, email)
        assert response.status_code == 403 and response.get_json()["error"] == "access_denied"
    assert [e.details["person"] for e in events_since(ledger, before)] == \
        ["mallory@elsewhere.example", "carol@acme.example"]
    assert deny(client, human_idp, approval_id, "mallory@elsewhere.example").status_code == 403
    assert PeopleStore(ledger).get_approval(approval_id).status == "pending"


@pytest.mark.parametrize("case", ["forged", "expired", "wrong audience", "other issuer", "unverified email",
                                  "garbage", "missing"])
def test_a_bad_human_id_token_is_invalid_token(client, dev_issuer, human_idp, case):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    headers = {
        "forged": bearer(id_token(human_idp, "alice@acme.example", forge=True)),
        "expired": bearer(id_token(human_idp, "alice@acme.example", ttl=-600)),
        "wrong audience": bearer(human_idp.mint_id_token("alice@acme.example", audience="someone-else")),
        "other issuer": bearer(dev_issuer.mint({"sub": "x", "email": "alice@acme.example"}, audience=CLIENT_ID)),
        "unverified email": bearer(id_token(human_idp, "alice@acme.example", email_verified=False)),
        "garbage": bearer("not.a.token"),
        "missing": {},
    }[case]
    response = client.post(f"/v1/approvals/{approval_id}/approve", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "eyJ" not in response.get_data(as_text=True)


@pytest.mark.parametrize("field,value", [("run", "other-run"), ("audience", "vault-api"),
                                         ("scope", "read"), ("ttl", "60")])
def test_an_approval_cannot_be_used_for_another_request(client, ledger, dev_issuer, human_idp, field, value):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    assert approve(client, human_idp, approval_id, "bob@acme.example").status_code == 200
    before = ledger.head()[0]
    if field == "run":
        other = Job.start(dev_issuer)                  # same workflow, another run
        response = poll(client, other, approval_id)
    elif field == "audience":
        response = poll(client, job, approval_id, audience=value, scope="unseal")
    else:
        response = poll(client, job, approval_id, **{field: value})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"
    assert response.get_json()["error_description"] == "the approval belongs to another request"
    (event,) = events_since(ledger, before)
    assert event.type == "deny" and event.details["approval_id"] == approval_id
    assert event.details["reason"].startswith(f"approval {approval_id} differs in")
    # the real request still gets its credential
    assert poll(client, job, approval_id).status_code == 200


def test_an_approval_mints_once(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    approve(client, human_idp, approval_id, "bob@acme.example")
    assert poll(client, job, approval_id).status_code == 200
    again = poll(client, job, approval_id)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    assert "already used" in again.get_json()["error_description"]
    assert ledger.search_events(type="mint", run_id=job.run_id, limit=10).__len__() == 1


def test_a_replayed_poll_attestation_is_refused_with_a_hint(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    form = job.form(approval_id=approval_id)
    assert client.post("/token", data=form).get_json()["error"] == "authorization_pending"
    replay = client.post("/token", data=form)
    assert replay.get_json()["error"] == "invalid_grant"
    assert "fresh attestation" in replay.get_json()["error_description"]


def _age(ledger, approval_id: str, *, seconds: int, decided: bool = False) -> None:
    """Let time pass for one approval (the tests cannot wait 30 minutes)."""
    column = "decided_at" if decided else "expires_at"
    with ledger.transaction() as tx:
        tx.execute(f"UPDATE approvals SET {column} = {column} - %s WHERE approval_id = %s",
                   (seconds, approval_id))


def test_an_expired_request_is_final(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    _age(ledger, approval_id, seconds=3600)
    late = approve(client, human_idp, approval_id, "alice@acme.example")
    assert late.status_code == 400 and "expired" in late.get_json()["error_description"]
    response = poll(client, job, approval_id)
    assert response.status_code == 400 and response.get_json()["error"] == "expired_token"
    listed = client.get("/v1/approvals?status=expired", headers=bearer(id_token(human_idp, "alice@acme.example")))
    assert approval_id in [a["approval_id"] for a in listed.get_json()["approvals"]]


def test_an_approval_not_collected_in_time_expires(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    approve(client, human_idp, approval_id, "alice@acme.example")
    _age(ledger, approval_id, seconds=601, decided=True)
    response = poll(client, job, approval_id)
    assert response.get_json()["error"] == "expired_token"


def test_denied_is_final(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    no_reason = client.post(f"/v1/approvals/{approval_id}/deny",
                            headers=bearer(id_token(human_idp, "bob@acme.example")))
    assert no_reason.status_code == 400 and no_reason.get_json()["error"] == "invalid_request"
    response = deny(client, human_idp, approval_id, "bob@acme.example", "freeze until Monday")
    assert response.status_code == 200 and response.get_json()["status"] == "denied"
    refused = poll(client, job, approval_id)
    assert refused.status_code == 400 and refused.get_json()["error"] == "access_denied"
    assert approve(client, human_idp, approval_id, "alice@acme.example").status_code == 400
    assert poll(client, job, approval_id).get_json()["error"] == "access_denied"
    denied = [e for e in ledger.search_events(type="denied", limit=100)
              if e.details["approval_id"] == approval_id]
    assert denied[0].details["approver"] == "bob@acme.example"
    assert denied[0].details["reason"] == "freeze until Monday"


def test_polling_faster_than_the_interval_is_slow_down(make_app, database_url, dev_issuer, human_idp):
    client = make_app(DATABASE_URL=database_url, APPROVAL_POLL_INTERVAL=3).test_client()
    job = Job.start(dev_issuer)
    pending = request_approval(client, job)
    assert pending["interval"] == 3
    fast = poll(client, job, pending["approval_id"])
    assert fast.status_code == 400
    assert fast.get_json()["error"] == "slow_down" and fast.get_json()["interval"] == 8
    ledger = client.application.extensions["broker"].ledger
    last = ledger.search_events(type="deny", run_id=job.run_id, limit=10)[-1]
    assert last.details["error"] == "slow_down" and last.details["approval_id"] == pending["approval_id"]


def test_two_people_are_needed_when_required_is_two(client, ledger, dev_issuer, human_idp):
    job = Job.start(dev_issuer, actor="someone-else")
    approval_id = request_approval(client, job, audience="vault-api", scope="unseal")["approval_id"]
    first = approve(client, human_idp, approval_id, "alice@acme.example").get_json()
    assert first["status"] == "pending" and len(first["votes"]) == 1
    twice = approve(client, human_idp, approval_id, "alice@acme.example")
    assert twice.status_code == 403 and "already approved" in twice.get_json()["error_description"]
    assert poll(client, job, approval_id, audience="vault-api", scope="unseal").get_json()["error"] == \
        "authorization_pending"
    assert approve(client, human_idp, approval_id, "bob@acme.example").get_json()["status"] == "approved"
    minted = poll(client, job, approval_id, audience="vault-api", scope="unseal")
    assert claims_of(minted.get_json()["access_token"])["authz"]["approvers"] == \
        ["alice@acme.example", "bob@acme.example"]


def test_an_approved_root_can_derive_under_its_policy(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    approve(client, human_idp, approval_id, "alice@acme.example")
    root = poll(client, job, approval_id).get_json()
    child = client.post("/token", data={"grant_type": job.form()["grant_type"],
                                        "subject_token": root["access_token"],
                                        "subject_token_type": job.form()["subject_token_type"],
                                        "audience": "reports-api"})
    assert child.status_code == 200, child.get_json()
    authz = claims_of(child.get_json()["access_token"])["authz"]
    assert authz["type"] == "derive" and authz["parent_authz"]["type"] == "human"


def test_a_run_without_an_actor_cannot_ask_for_a_not_self_approval(client, dev_issuer):
    job = Job.start(dev_issuer, actor=None)
    response = client.post("/token", data=job.form())
    assert response.status_code == 400 and response.get_json()["error"] == "unauthorized_client"


def test_people_list_only_what_they_may_approve(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    mine = client.get("/v1/approvals?status=pending", headers=bearer(id_token(human_idp, "alice@acme.example")))
    listed = {a["approval_id"]: a for a in mine.get_json()["approvals"]}
    assert listed[approval_id]["you"]["may_approve"] is True
    assert listed[approval_id]["principal"].startswith("github:acme/payments:")
    assert listed[approval_id]["run_url"].startswith("https://github.com/acme/payments/actions/runs/")
    theirs = client.get("/v1/approvals", headers=bearer(id_token(human_idp, "mallory@elsewhere.example")))
    assert approval_id not in [a["approval_id"] for a in theirs.get_json()["approvals"]]
    octo = client.get(f"/v1/approvals/{approval_id}", headers=bearer(id_token(human_idp, "octocat@acme.example")))
    assert octo.get_json()["you"]["may_approve"] is False
    assert client.get("/v1/approvals?status=bogus",
                      headers=bearer(id_token(human_idp, "alice@acme.example"))).status_code == 400


def test_auditors_see_the_approval_in_the_run(client, dev_issuer, human_idp):
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    approve(client, human_idp, approval_id, "alice@acme.example")
    minted = poll(client, job, approval_id).get_json()
    run = client.get(f"/v1/runs/{job.run_id}", headers=basic(*AUDITOR)).get_json()
    assert minted["credential_id"] in str(run)
    page = client.get(f"/audit/credentials/{minted['credential_id']}", headers=basic(*AUDITOR))
    assert page.status_code == 200 and b"approved by alice@acme.example" in page.data


def test_concurrent_polls_mint_exactly_once(app, ledger, dev_issuer, human_idp):
    import threading

    client = app.test_client()
    job = Job.start(dev_issuer)
    approval_id = request_approval(client, job)["approval_id"]
    approve(client, human_idp, approval_id, "alice@acme.example")
    forms = [job.form(approval_id=approval_id) for _ in range(8)]
    results: list[int] = []
    barrier = threading.Barrier(len(forms))

    def one(form):
        local = app.test_client()
        barrier.wait()
        results.append(local.post("/token", data=form).status_code)

    threads = [threading.Thread(target=one, args=(f,)) for f in forms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [200] + [400] * 7
    mints = [e for e in ledger.search_events(type="mint", run_id=job.run_id, limit=20)]
    assert len(mints) == 1 and PeopleStore(ledger).get_approval(approval_id).credential_id == mints[0].credential_id
    assert ledger.verify().ok


def test_ci_run_links():
    from broker.people.approvals import ci_run_url
    from broker.policy.model import IssuerConfig

    def issuer(preset, iss):
        return IssuerConfig(name="x", preset=preset, issuer=iss, audience="a", algorithms=("RS256",),
                            principal="{sub}", run={}, required_claims=())

    run = {"id": "42", "attempt": "2", "repository": "acme/pay ments"}
    assert ci_run_url(issuer("github-actions", "https://token.actions.githubusercontent.com"), run) == \
        "https://github.com/acme/pay%20ments/actions/runs/42/attempts/2"
    assert ci_run_url(issuer("github-actions", "https://ghe.acme.example/_services/token"), run) == \
        "https://ghe.acme.example/acme/pay%20ments/actions/runs/42/attempts/2"
    assert ci_run_url(issuer("gitlab-ci", "https://gitlab.acme.example"), {"id": "7", "repository": "g/p"}) == \
        "https://gitlab.acme.example/g/p/-/pipelines/7"
    assert ci_run_url(issuer("kubernetes", "https://k8s"), run) is None
    assert ci_run_url(issuer("github-actions", "https://x"), {"id": "javascript:1", "repository": "a/b"}) is None
