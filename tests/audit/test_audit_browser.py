"""The auditor's pages in a real headless Chromium against the real server (gunicorn).

Search for a statement, follow it to the credential, see the lineage graph's nodes, click
through to a child; a screenshot of the credential page is saved under tests/artifacts/ for
review. Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/ensure-browser installs
them; ``make test`` runs it) and ``selenium`` (the ``dev`` extra).
"""
from __future__ import annotations

import base64

import pytest

from broker.ledger import open_ledger
from tests.support.audit import build_story, write_audit_policies
from tests.support.browser import headless_chromium
from tests.support.oauth import AUDITOR
from tests.support.server import REPO, running_broker

ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(window_size="1440,1200") as driver:
        yield driver


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'ledger.db'}"
    with open_ledger(url) as ledger:
        story = build_story(ledger)
    env = {"BROKER_POLICY_DIR": str(write_audit_policies(tmp / "policies")),
           "BROKER_STATE_DIR": str(tmp / "state"), "BROKER_DATABASE_URL": url}
    with running_broker(env, workers=1) as base:
        yield story, base


def _login(driver, user: str, secret: str) -> None:
    """HTTP Basic for every request of the page (CDP), as the browser's prompt would send."""
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                           {"headers": {"Authorization": f"Basic {token}"}})


def test_search_open_lineage_and_see_the_graph(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    story, base = site
    _login(browser, *AUDITOR)
    browser.get(f"{base}/audit/")
    assert "Who did this" in browser.find_element(By.TAG_NAME, "h1").text
    assert "chain intact" in browser.find_element(By.ID, "ledger-status").text

    # Who ran "UPDATE accounts"? The search box finds the statements and their principal.
    box = browser.find_element(By.ID, "q")
    box.send_keys("UPDATE accounts")
    browser.find_element(By.ID, "search-button").click()
    wait = WebDriverWait(browser, 15)
    wait.until(ec.presence_of_element_located((By.ID, "statements")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#statements tbody tr")
    assert len(rows) == 4 and "UPDATE accounts SET balance = 0" in rows[0].text

    # Open the credential that ran it: the lineage graph is drawn, with every kind of node.
    rows[0].find_element(By.CSS_SELECTOR, "a[href^='/audit/credentials/']").click()
    wait.until(ec.presence_of_element_located((By.ID, "lineage-graph")))
    assert browser.find_element(By.ID, "credential-id").text == story.root
    nodes = browser.find_elements(By.CSS_SELECTOR, "#lineage-graph g.node")
    kinds = [n.get_attribute("data-kind") for n in nodes]
    assert kinds.count("authorizer") == 1 and kinds.count("run") == 1
    assert kinds.count("credential") == 1 and kinds.count("child") == 3
    assert kinds.count("statement") == 8 and "more" in kinds
    labels = " ".join(n.text for n in nodes)
    assert "policy payments-deploy" in labels and "run run-1 · attempt 1" in labels
    graph = browser.find_element(By.ID, "lineage-graph")
    assert graph.size["width"] > 900 and graph.size["height"] > 300      # laid out, not collapsed
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "audit-credential.png"))

    # Follow the first child through its graph node; its page shows the root as an ancestor.
    child = browser.find_element(By.CSS_SELECTOR, f"#lineage-graph g.node[data-id='{story.children[0]}'] a")
    child.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "credential-id"), story.children[0]))
    ancestors = browser.find_elements(By.CSS_SELECTOR, "#ancestors tbody tr")
    assert [a.get_attribute("data-id") for a in ancestors] == [story.root]
    assert browser.find_elements(By.CSS_SELECTOR, "#lineage-graph g.node[data-kind='ancestor']")


def test_malicious_strings_are_shown_not_run(browser, site):
    from selenium.webdriver.common.by import By

    story, base = site
    _login(browser, *AUDITOR)
    browser.get(f"{base}/audit/credentials/{story.evil}")
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "<script>alert(document.cookie)</script>" in page        # visible as text
    assert browser.find_elements(By.TAG_NAME, "script") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "audit-evil.png"))


def test_without_credentials_nothing_is_shown(browser, site):
    _story, base = site
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    browser.get(f"{base}/audit/events")
    # Headless Chromium has no prompt to show: the page stays empty, nothing is disclosed.
    assert "Event timeline" not in browser.page_source
