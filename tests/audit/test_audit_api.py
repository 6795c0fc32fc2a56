"""The lineage API on SQLite and PostgreSQL: shapes, paging, bad parameters, authentication."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.support.audit import EVIL_PRINCIPAL, EVIL_STATEMENT, PRINCIPAL, deny, mint
from tests.support.oauth import AUDITOR, INTROSPECTOR, basic


def get(client, auth, path, status=200):
    response = client.get(path, headers=auth)
    assert response.status_code == status, (path, response.status_code, response.data[:500])
    return response.get_json()


def ids(nodes):
    out = []
    for node in nodes:
        out.append(node["credential_id"])
        out.extend(ids(node.get("children", [])))
    return out


# -- lineage ---------------------------------------------------------------------------------

def test_lineage_of_a_grandchild_walks_up_to_the_root(client, auth, story):
    body = get(client, auth, f"/v1/credentials/{story.grandchild}/lineage")
    assert body["credential"]["credential_id"] == story.grandchild
    assert [a["credential_id"] for a in body["ancestors"]] == [story.children[0], story.root]
    assert body["root_id"] == story.root
    assert body["root_authorizer"]["name"] == "payments-deploy"
    for step in body["ancestors"]:            # attestation issuer, principal, run, authorizer
        assert step["issuer"] == "github-actions" and step["principal"] == PRINCIPAL
        assert step["run"] == {"id": "run-1", "attempt": 1} and step["authorizer"]["type"] == "policy"
    assert body["descendants"] == [] and body["descendant_count"] == 0
    assert body["credential"]["usage"]["count"] == 1
    assert body["credential"]["usage"]["events"][0]["details"]["statement"] == "DELETE FROM sessions"


def test_lineage_of_the_root_is_a_nested_tree_with_usage_and_lifecycle(client, auth, story):
    body = get(client, auth, f"/v1/credentials/{story.root}/lineage?usage_limit=5")
    assert body["ancestors"] == [] and body["root_id"] == story.root
    tree = body["descendants"]
    assert [n["credential_id"] for n in tree] == story.children
    assert [c["credential_id"] for c in tree[0]["children"]] == [story.grandchild]
    assert body["descendant_count"] == 4 and body["truncated"] is False
    assert body["depth_limited"] is False
    root = body["credential"]
    assert root["mint"]["seq"] >= 1 and len(root["mint"]["hash"]) == 64
    assert root["usage"]["count"] == 12
    assert [e["seq"] for e in root["usage"]["events"]] == story.root_usage[:5]
    assert root["usage"]["next"].startswith("/v1/events?type=usage&credential_id=")
    revoked, ended = tree[1], tree[2]
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert revoked["revocations"][0]["details"]["result"] == "revoked"
    assert ended["ended_at"] and ended["expiries"][0]["type"] == "expire"
    assert tree[0]["children"][0]["usage"]["count"] == 1
    # Usage pages are compact; revocations and expiries are whole events (hash recomputable).
    assert set(root["usage"]["events"][0]) == {"seq", "ts", "type", "details", "hash"}
    assert set(revoked["revocations"][0]) >= {"seq", "ts", "type", "prev_hash", "hash", "details"}


def test_lineage_follow_usage_next_link_pages_through_all_usage(client, auth, story):
    body = get(client, auth, f"/v1/credentials/{story.root}/lineage?usage_limit=5")
    seen = [e["seq"] for e in body["credential"]["usage"]["events"]]
    link = body["credential"]["usage"]["next"]
    while link:
        page = get(client, auth, link if "limit=" in link else link + "&limit=4")
        seen += [e["seq"] for e in page["events"]]
        link = page["next"]
    assert seen == story.root_usage


def test_lineage_depth_and_limit_bound_the_tree(client, auth, story):
    shallow = get(client, auth, f"/v1/credentials/{story.root}/lineage?depth=1")
    assert shallow["descendant_count"] == 3 and shallow["depth_limited"] is True
    assert all(n["children"] == [] for n in shallow["descendants"])
    cut = get(client, auth, f"/v1/credentials/{story.root}/lineage?limit=2")
    assert cut["descendant_count"] == 2 and cut["truncated"] is True
    none = get(client, auth, f"/v1/credentials/{story.root}/lineage?usage_limit=0")
    assert none["credential"]["usage"]["events"] == [] and none["credential"]["usage"]["count"] == 12


def test_lineage_unknown_credential_is_404(client, auth, story):
    body = get(client, auth, "/v1/credentials/01aaaaaaaaaaaaaaaaaaaaaaaa/lineage", 404)
    assert body["error"] == "not_found"


# -- runs and principals ---------------------------------------------------------------------

def test_run_lists_every_attempt_with_trees_and_denials(client, auth, story):
    body = get(client, auth, "/v1/runs/run-1")
    assert body["run_id"] == "run-1" and body["attempts"] == [1, 2, 3]
    roots = [n["credential_id"] for n in body["credentials"]]
    assert roots == [story.root, story.retry]
    assert set(ids(body["credentials"])) >= {story.grandchild, story.retry_child, *story.children}
    assert body["credential_count"] == 7 and body["descendant_count"] == 0
    assert [d["run"]["attempt"] for d in body["denied"]] == [3]
    assert body["truncated"] is False


def test_run_with_slashes_and_unknown_run(client, auth, ledger):
    cid = mint(ledger, run={"id": "gitlab/group/project/pipelines/42"})
    body = get(client, auth, "/v1/runs/gitlab/group/project/pipelines/42")
    assert [n["credential_id"] for n in body["credentials"]] == [cid]
    assert get(client, auth, "/v1/runs/no-such-run", 404)["error"] == "not_found"


def test_principal_window_includes_denied_attempts(client, auth, story, ledger):
    body = get(client, auth, f"/v1/principals/{PRINCIPAL}")
    assert {c["credential_id"] for c in body["credentials"]} >= {story.root, story.retry}
    assert all(c["principal"] == PRINCIPAL for c in body["credentials"])
    assert [d["type"] for d in body["denied"]] == ["deny"]
    assert body["since"] < body["until"]
    old = get(client, auth, f"/v1/principals/{PRINCIPAL}?since=2001-01-01&until=2001-01-02")
    assert old["credentials"] == [] and old["denied"] == []      # known principal, empty window
    one = get(client, auth, f"/v1/principals/{PRINCIPAL}?limit=1")
    assert len(one["credentials"]) == 1 and one["credentials_truncated"] is True


def test_principal_window_is_half_open(client, auth, ledger):
    early = mint(ledger, principal="p-window", issued_at=1_800_000_000)
    late = mint(ledger, principal="p-window", issued_at=1_800_000_100)
    body = get(client, auth, "/v1/principals/p-window?since=1800000000&until=1800000100")
    assert [c["credential_id"] for c in body["credentials"]] == [early]
    body = get(client, auth, "/v1/principals/p-window?since=2027-01-15T08:00:00Z&until=1800000101")
    assert [c["credential_id"] for c in body["credentials"]] == [late, early]


def test_unknown_principal_is_404_and_escaped_principal_round_trips(client, auth, story):
    assert get(client, auth, "/v1/principals/nobody", 404)["error"] == "not_found"
    body = get(client, auth, "/v1/principals/" + quote(EVIL_PRINCIPAL, safe=""))
    assert body["principal"] == EVIL_PRINCIPAL
    assert [c["credential_id"] for c in body["credentials"]] == [story.evil]


# -- events ----------------------------------------------------------------------------------

def test_events_filters(client, auth, story):
    usage_events = get(client, auth, f"/v1/events?type=usage&credential_id={story.root}")["events"]
    assert [e["seq"] for e in usage_events] == story.root_usage
    denies = get(client, auth, f"/v1/events?type=deny&principal={quote(PRINCIPAL)}")["events"]
    assert len(denies) == 1 and denies[0]["run"]["attempt"] == 3
    everything = get(client, auth, "/v1/events?limit=1000")
    assert [e["seq"] for e in everything["events"]] == list(range(1, len(everything["events"]) + 1))
    assert everything["next"] is None and everything["next_cursor"] is None


def test_events_time_window(client, auth, story):
    events = get(client, auth, "/v1/events?limit=1000")["events"]
    middle = events[len(events) // 2]
    after = get(client, auth, f"/v1/events?since={middle['ts']}&limit=1000")["events"]
    assert after[0]["seq"] <= middle["seq"] and all(e["ts"] >= middle["ts"] for e in after)
    before = get(client, auth, f"/v1/events?until={middle['ts']}&limit=1000")["events"]
    assert all(e["ts"] < middle["ts"] for e in before)
    assert len(before) + len(after) == len(events)
    assert get(client, auth, "/v1/events?since=2999-01-01")["events"] == []
    assert get(client, auth, "/v1/events?until=2001-01-01")["events"] == []


def test_events_keyset_pages_are_contiguous_and_cursor_is_bound_to_filters(client, auth, story):
    all_seqs = [e["seq"] for e in get(client, auth, "/v1/events?limit=1000")["events"]]
    seen, link = [], "/v1/events?limit=3"
    while link:
        page = get(client, auth, link)
        assert len(page["events"]) <= 3
        seen += [e["seq"] for e in page["events"]]
        link = page["next"]
    assert seen == all_seqs
    first = get(client, auth, "/v1/events?limit=3&type=usage")
    other = get(client, auth, f"/v1/events?limit=3&type=mint&cursor={first['next_cursor']}", 400)
    assert other["error"] == "invalid_request" and "cursor" in other["error_description"]


# -- bad parameters and authentication -------------------------------------------------------

BAD = [
    ("lineage-malformed-id", "/v1/credentials/not-an-id/lineage"),
    ("lineage-unknown-param", "/v1/credentials/{root}/lineage?foo=1"),
    ("lineage-depth-zero", "/v1/credentials/{root}/lineage?depth=0"),
    ("lineage-depth-too-big", "/v1/credentials/{root}/lineage?depth=33"),
    ("lineage-depth-not-int", "/v1/credentials/{root}/lineage?depth=abc"),
    ("lineage-depth-negative", "/v1/credentials/{root}/lineage?depth=-1"),
    ("lineage-limit-too-big", "/v1/credentials/{root}/lineage?limit=10001"),
    ("lineage-usage-limit-too-big", "/v1/credentials/{root}/lineage?usage_limit=101"),
    ("lineage-repeated", "/v1/credentials/{root}/lineage?depth=1&depth=2"),
    ("run-control-char", "/v1/runs/run%01x"),
    ("run-too-long", "/v1/runs/" + "r" * 257),
    ("run-unknown-param", "/v1/runs/run-1?since=1"),
    ("principal-bad-since", f"/v1/principals/{PRINCIPAL}?since=yesterday"),
    ("principal-bad-until", f"/v1/principals/{PRINCIPAL}?until=2026-13-01"),
    ("principal-since-after-until", f"/v1/principals/{PRINCIPAL}?since=2026-02-01&until=2026-01-01"),
    ("principal-offset-without-colon", f"/v1/principals/{PRINCIPAL}?since=2026-01-01T00:00:00+0100"),
    ("principal-naive-time", f"/v1/principals/{PRINCIPAL}?since=2026-01-01T00:00:00"),
    ("principal-limit", f"/v1/principals/{PRINCIPAL}?limit=0"),
    ("principal-unknown-param", f"/v1/principals/{PRINCIPAL}?type=mint"),
    ("events-bad-type", "/v1/events?type=launch"),
    ("events-bad-credential", "/v1/events?credential_id=xyz"),
    ("events-bad-since", "/v1/events?since=soon"),
    ("events-relative-since", "/v1/events?since=24h"),
    ("events-window-reversed", "/v1/events?since=2026-02-01&until=2026-01-01"),
    ("events-cursor-garbage", "/v1/events?cursor=%%%"),
    ("events-cursor-not-json", "/v1/events?cursor=aGVsbG8"),
    ("events-cursor-negative", "/v1/events?cursor=eyJhZnRlciI6LTEsInEiOiJ4IiwidiI6MX0"),
    ("events-limit-zero", "/v1/events?limit=0"),
    ("events-limit-too-big", "/v1/events?limit=1001"),
    ("events-unknown-param", "/v1/events?order=desc"),
    ("events-repeated-type", "/v1/events?type=mint&type=deny"),
    ("events-principal-control", "/v1/events?principal=a%0Ab"),
]


@pytest.mark.parametrize("path", [p for _, p in BAD], ids=[n for n, _ in BAD])
def test_bad_parameters_are_invalid_request(client, auth, story, path):
    body = get(client, auth, path.format(root=story.root), 400)
    assert body["error"] == "invalid_request" and body["error_description"]


ENDPOINTS = ["/v1/credentials/{root}/lineage", "/v1/runs/run-1", f"/v1/principals/{PRINCIPAL}",
             "/v1/events", "/v1/credentials/{root}/lineage?depth=0"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_authentication_comes_first(client, story, path):
    path = path.format(root=story.root)
    none = client.get(path)
    assert none.status_code == 401 and none.get_json()["error"] == "invalid_client"
    assert none.headers["WWW-Authenticate"].startswith("Basic")
    wrong = client.get(path, headers=basic(AUDITOR[0], "wrong-secret"))
    assert wrong.status_code == 401
    unknown = client.get(path, headers=basic("mallory", AUDITOR[1]))
    assert unknown.status_code == 401
    forbidden = client.get(path, headers=basic(*INTROSPECTOR))
    assert forbidden.status_code == 403 and forbidden.get_json()["error"] == "access_denied"


def test_responses_are_not_cached(client, auth, story):
    response = client.get(f"/v1/credentials/{story.root}/lineage", headers=auth)
    assert response.headers["Cache-Control"] == "no-store"


def test_deny_only_run_and_principal_are_found(client, auth, ledger):
    deny(ledger, principal="only-denied", run={"id": "denied-run", "attempt": 1})
    run = get(client, auth, "/v1/runs/denied-run")
    assert run["credentials"] == [] and len(run["denied"]) == 1
    principal = get(client, auth, "/v1/principals/only-denied")
    assert principal["credentials"] == [] and len(principal["denied"]) == 1


def test_evil_strings_come_back_verbatim_in_json(client, auth, story):
    body = get(client, auth, f"/v1/credentials/{story.evil}/lineage")
    assert body["credential"]["principal"] == EVIL_PRINCIPAL
    assert body["credential"]["usage"]["events"][0]["details"]["statement"] == EVIL_STATEMENT
    assert get(client, auth, "/v1/runs/" + quote("<b>r</b>", safe=""))["run_id"] == "<b>r</b>"
