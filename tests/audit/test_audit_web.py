"""The /audit/ pages: authentication, escaping of attacker-influenced strings, CSP, search."""
from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from tests.support.audit import EVIL_PRINCIPAL, EVIL_STATEMENT, PRINCIPAL
from tests.support.oauth import AUDITOR, INTROSPECTOR, basic


def page(client, auth, path, status=200):
    response = client.get(path, headers=auth)
    assert response.status_code == status, (path, response.status_code, response.data[:800])
    return response


PAGES = ["/audit/", "/audit/credentials/{root}", "/audit/runs/run-1",
         f"/audit/principals/{PRINCIPAL}", "/audit/events", "/audit/ledger",
         "/audit/search?q=UPDATE+accounts"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_with_a_strict_csp(client, auth, story, path):
    response = page(client, auth, path.format(root=story.root))
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert b"<script" not in response.data


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_an_audit_client(client, story, path):
    path = path.format(root=story.root)
    anonymous = client.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="nhi-broker"'   # the browser prompts
    assert anonymous.mimetype == "text/html"
    assert client.get(path, headers=basic(AUDITOR[0], "nope")).status_code == 401
    forbidden = client.get(path, headers=basic(*INTROSPECTOR))
    assert forbidden.status_code == 403 and b"access_denied" in forbidden.data


def test_stylesheet_is_served_without_credentials(client):
    response = client.get("/audit/static/audit.css")
    assert response.status_code == 200 and response.mimetype == "text/css"


class _Tags(HTMLParser):
    """Every element and attribute the browser would build from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _assert_inert(html: str) -> None:
    """No element or attribute came out of the data: no script or img, no event handler,
    no javascript: URL."""
    parser = _Tags()
    parser.feed(html)
    names = {tag for tag, _ in parser.tags}
    assert not names & {"script", "img", "iframe", "object", "embed", "b"}, names
    for tag, attrs in parser.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action"):
            assert not (attrs.get(name) or "").lower().startswith("javascript:"), (tag, attrs)


def test_malicious_principal_and_statement_are_escaped_everywhere(client, auth, story):
    paths = [f"/audit/credentials/{story.evil}", "/audit/principals/" + quote(EVIL_PRINCIPAL, safe=""),
             "/audit/runs/" + quote("<b>r</b>", safe=""), "/audit/events", "/audit/",
             "/audit/search?q=" + quote("</code><script>")]
    for path in paths:
        html = page(client, auth, path).data.decode()
        _assert_inert(html)
        assert EVIL_PRINCIPAL not in html
        assert EVIL_STATEMENT not in html and "<b>r</b>" not in html
    credential = page(client, auth, f"/audit/credentials/{story.evil}").data.decode()
    # The escaped text is there (shown, not executed), in the tables and in the SVG graph.
    assert "github:&lt;script&gt;alert(&#34;p&#34;)&lt;/script&gt;" in credential
    assert "&lt;/code&gt;&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in credential


def test_credential_page_shows_graph_lineage_usage_and_timeline(client, auth, story):
    html = page(client, auth, f"/audit/credentials/{story.children[0]}").data.decode()
    for kind in ("authorizer", "run", "ancestor", "credential", "child"):
        assert f'data-kind="{kind}"' in html
    assert f'data-id="{story.grandchild}"' in html            # the child box, linked
    assert f'href="/audit/credentials/{story.root}"' in html  # the ancestor, linked
    root_html = page(client, auth, f"/audit/credentials/{story.root}").data.decode()
    assert 'data-kind="statement"' in root_html and "UPDATE accounts SET balance = 0" in root_html
    assert 'id="timeline"' in root_html and 'id="usage"' in root_html
    assert "chain intact" in root_html                           # the ledger status pill


def test_search_box_finds_each_kind(client, auth, story):
    assert page(client, auth, f"/audit/search?q={story.root.upper()}", 302).headers["Location"] \
        == f"/audit/credentials/{story.root}"
    assert page(client, auth, "/audit/search?q=run-1", 302).headers["Location"] == "/audit/runs/run-1"
    assert page(client, auth, f"/audit/search?q={quote(PRINCIPAL)}", 302).headers["Location"] \
        == f"/audit/principals/{PRINCIPAL}"
    html = page(client, auth, "/audit/search?q=update+ACCOUNTS").data.decode()
    assert html.count("UPDATE accounts SET balance = 0") == 4
    assert "payments-deploy" in html                              # authorizer of each hit
    missing = page(client, auth, "/audit/search?q=nothing-like-this").data.decode()
    assert "nothing matches" in missing
    assert page(client, auth, "/audit/search?q=run-1&kind=credential", 404).status_code == 404
    assert page(client, auth, "/audit/search?q=x&kind=bogus", 400).status_code == 400


def test_bad_input_renders_html_errors(client, auth, story):
    assert b"invalid_request" in page(client, auth, "/audit/credentials/nope", 400).data
    assert b"not_found" in page(client, auth, "/audit/credentials/01aaaaaaaaaaaaaaaaaaaaaaaa", 404).data
    assert page(client, auth, "/audit/events?type=bogus", 400).status_code == 400
    assert page(client, auth, f"/audit/principals/{PRINCIPAL}?since=whenever", 400).status_code == 400


def test_events_page_filters_and_pages(client, auth, story):
    html = page(client, auth, f"/audit/events?type=usage&credential_id={story.root}&since=1h").data.decode()
    assert html.count('class="event type-usage"') == 12
    assert "Next page" not in html
    everything = page(client, auth, "/audit/events").data.decode()
    assert "Next page" not in everything or 'id="next-page"' in everything


def test_ledger_page_verifies_and_reports_tampering(client, auth, story, ledger, database_url):
    html = page(client, auth, "/audit/ledger").data.decode()
    assert "Hash chain intact" in html
    tamper(database_url, "UPDATE events SET principal = 'someone-else' WHERE seq = 2")
    html = page(client, auth, "/audit/ledger").data.decode()
    assert "TAMPERED" in html and "seq 2" in html


def tamper(url: str, sql: str) -> None:
    """Change a row behind the ledger's back, the way an attacker with database access would."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            conn.execute(sql)
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def test_ledger_page_shows_the_latest_signed_checkpoint(client, auth, story, app, ledger):
    from broker.transparency import checkpoints

    ctx = app.extensions["broker"]
    checkpoints.checkpoint_now(ledger, ctx.signer, issuer=ctx.issuer)
    checkpoint = checkpoints.latest_checkpoint(ledger)
    html = page(client, auth, "/audit/ledger").data.decode()
    assert "Latest signed checkpoint" in html and checkpoint.root_hash in html
    assert f"checkpoint size {checkpoint.tree_size}" in html
