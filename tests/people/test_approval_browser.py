"""The approval pages in a real headless Chromium against the real server (gunicorn): the CI
side (the SDK, in a thread) waits; a person opens the approval link, signs in through the dev
human IdP's login form, sees what is asked, approves; the CI side receives its credential. A
screenshot of the page is saved under tests/artifacts/ for review."""
from __future__ import annotations

import threading

import pytest

from broker.sdk import Broker, BrokerError
from tests.support.browser import headless_chromium
from tests.support.oauth import claims_of
from tests.support.people import Job
from tests.support.server import REPO

ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(window_size="1280,1100") as driver:
        yield driver


def test_sign_in_see_the_request_approve_and_the_ci_side_gets_its_credential(browser, http_broker):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    job = Job.start(http_broker.dev_issuer)
    pending: dict = {}
    result: dict = {}
    ready = threading.Event()

    def on_pending(body):
        pending.update(body)
        ready.set()

    def ci_side():
        try:
            broker = Broker(http_broker.url, subject_token=job.attestation, approval_timeout=90,
                            on_approval_pending=on_pending)
            cred = broker.credential("prod-api", scope="migrate")
            result["claims"] = claims_of(cred.access_token)
            cred.close()
        except BrokerError as exc:
            result["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=ci_side, daemon=True)
    thread.start()
    assert ready.wait(20) and "approval_url" in pending, result
    approval_id = pending["approval_id"]

    wait = WebDriverWait(browser, 20)
    browser.get(pending["approval_url"])
    # Not signed in: the broker sends the browser to the IdP, which shows its login form.
    wait.until(ec.presence_of_element_located((By.ID, "sign-in")))
    assert browser.current_url.startswith(http_broker.human_idp.issuer + "/authorize?")
    Select(browser.find_element(By.ID, "user")).select_by_value("alice@acme.example")
    browser.find_element(By.ID, "sign-in").click()

    # Back on the broker, signed in, on the request's page.
    wait.until(ec.presence_of_element_located((By.ID, "approval-id")))
    assert browser.current_url == pending["approval_url"]
    assert browser.find_element(By.ID, "signed-in-as").text.startswith("alice@acme.example")
    assert browser.find_element(By.ID, "approval-status").text == "pending"
    assert browser.find_element(By.ID, "principal").text.startswith("github:acme/payments:")
    assert browser.find_element(By.ID, "commit").text == job.claims["sha"]
    assert browser.find_element(By.ID, "target").text.startswith("prod-api")
    assert browser.find_element(By.ID, "scope").text == "migrate"
    assert "10m" in browser.find_element(By.ID, "ttl").text
    assert "prod-migrations" in browser.find_element(By.ID, "policy").text
    link = browser.find_element(By.ID, "run-link").get_attribute("href")
    assert link == f"https://github.com/acme/payments/actions/runs/{job.run_id}/attempts/1"
    assert browser.find_elements(By.TAG_NAME, "script") == []
    browser.find_element(By.ID, "approve-reason").send_keys("Migration 0042 reviewed with the team")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "approval-request.png"))
    browser.find_element(By.ID, "approve").click()

    wait.until(ec.presence_of_element_located((By.ID, "notice")))
    assert "You approved this request" in browser.find_element(By.ID, "notice").text

    thread.join(timeout=30)
    assert "error" not in result, result.get("error")
    authz = result["claims"]["authz"]
    assert authz["type"] == "human" and authz["approvers"] == ["alice@acme.example"]
    assert authz["approval_id"] == approval_id
    browser.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "approval-status"), "consumed"))
    browser.save_screenshot(str(ARTIFACTS / "approval-approved.png"))
    approved = [e for e in http_broker.ledger.search_events(type="approved", run_id=job.run_id, limit=5)]
    assert approved[0].details["via"] == "web"
    assert approved[0].details["reason"] == "Migration 0042 reviewed with the team"
