"""`broker audit …` as a user runs it (a subprocess): against the local ledger on SQLite and
PostgreSQL, and against a remote broker (real gunicorn) with client credentials."""
from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from broker.ledger import open_ledger
from tests.support.audit import EVIL_PRINCIPAL, EVIL_STATEMENT, PRINCIPAL, build_story
from tests.support.oauth import AUDITOR, INTROSPECTOR
from tests.support.server import broker_cli, running_broker


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return broker_cli("audit", *args, env={"COLUMNS": "200", **(env or {})},
                      without=("BROKER_CLIENT_ID", "BROKER_CLIENT_SECRET", "BROKER_DATABASE_URL"))


@pytest.fixture
def local(database_url):
    """A populated ledger and the environment that points the CLI at it."""
    with open_ledger(database_url) as ledger:
        story = build_story(ledger)
    return story, {"BROKER_DATABASE_URL": database_url}


def test_lineage_tree_and_json(local):
    story, env = local
    human = broker("lineage", story.grandchild, env=env)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith("authorizer: ") and "payments-deploy" in lines[0]
    order = [next(i for i, line in enumerate(lines) if cid in line)
             for cid in (story.root, story.children[0], story.grandchild)]
    assert order == sorted(order)                     # root → child → grandchild, nested
    assert "DELETE FROM sessions" in human.stdout
    body = json.loads(broker("lineage", story.root, "--json", "--usage-limit", "2", env=env).stdout)
    assert body["descendant_count"] == 4 and len(body["credential"]["usage"]["events"]) == 2


def test_run_principal_events_who(local):
    story, env = local
    run = broker("run", "run-1", env=env)
    assert run.returncode == 0 and story.retry_child in run.stdout and "denied attempts" in run.stdout
    assert json.loads(broker("run", "run-1", "--json", env=env).stdout)["attempts"] == [1, 2, 3]
    principal = json.loads(broker("principal", PRINCIPAL, "--since", "1h", "--json", env=env).stdout)
    assert {c["credential_id"] for c in principal["credentials"]} >= {story.root, story.retry}
    assert len(principal["denied"]) == 1
    events = json.loads(broker("events", "--type", "usage", "--credential-id", story.root,
                               "--limit", "5", "--json", env=env).stdout)
    assert [e["seq"] for e in events["events"]] == story.root_usage[:5]
    page2 = json.loads(broker("events", "--type", "usage", "--credential-id", story.root,
                              "--limit", "5", "--cursor", events["next_cursor"], "--json", env=env).stdout)
    assert [e["seq"] for e in page2["events"]] == story.root_usage[5:10]
    table = broker("events", "--type", "deny", "--since", "1h", env=env)
    assert table.returncode == 0 and "no policy allows" in table.stdout
    who = broker("who", "--statement", "UPDATE accounts", "--since", "1h", env=env)
    assert who.returncode == 0, who.stderr
    assert who.stdout.count("UPDATE accounts SET balance = 0") == 4 and "payments-deploy" in who.stdout
    hits = json.loads(broker("who", "--statement", "update ACCOUNTS", "--json", env=env).stdout)
    assert [h["credential_id"] for h in hits["usage"]] == [story.root] * 4
    assert hits["usage"][0]["principal"] == PRINCIPAL


def test_terminal_output_neutralizes_escape_sequences(local):
    story, env = local
    result = broker("lineage", story.evil, env=env)
    assert result.returncode == 0
    assert "\x1b" not in result.stdout                     # the statement's ESC[2J is shown as ?
    assert "'</code><script>alert(document.cookie)</script>' -- ?[2J" in result.stdout
    assert EVIL_PRINCIPAL[:30] in result.stdout            # rich markup in it printed literally
    body = json.loads(broker("lineage", story.evil, "--json", env=env).stdout)
    assert body["credential"]["usage"]["events"][0]["details"]["statement"] == EVIL_STATEMENT


def test_exit_codes(local, tmp_path):
    story, env = local
    assert broker("lineage", "01aaaaaaaaaaaaaaaaaaaaaaaa", env=env).returncode == 1
    assert broker("run", "nope", env=env).returncode == 1
    assert broker("lineage", "not-an-id", env=env).returncode == 2
    assert broker("events", "--since", "whenever", env=env).returncode == 2
    assert broker("events", "--type", "launch", env=env).returncode == 2
    unreachable = broker("run", "x", env={"BROKER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert unreachable.returncode == 3 and "unreachable" in unreachable.stderr


def test_export_jsonl_and_ocsf(local):
    story, env = local
    jsonl = broker("export", "--since", "1h", env=env)
    assert jsonl.returncode == 0, jsonl.stderr
    events = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(len(e["hash"]) == 64 for e in events)
    ocsf = [json.loads(line) for line in broker("export", "--since", "1h", "--format", "ocsf",
                                                env=env).stdout.splitlines()]
    assert len(ocsf) == len(events)
    by_type: dict[str, Any] = {}
    for record in ocsf:
        by_type.setdefault(record["unmapped"]["ledger"]["type"], record)
    assert (by_type["mint"]["class_uid"], by_type["mint"]["activity_id"], by_type["mint"]["status_id"]) == (3002, 1, 1)
    assert (by_type["deny"]["class_uid"], by_type["deny"]["status_id"]) == (3002, 2)
    assert by_type["expire"]["activity_id"] == 2
    assert by_type["usage"]["class_uid"] == 6005
    assert by_type["revoke"]["class_uid"] == 6003 and by_type["revoke"]["activity_id"] == 4
    assert by_type["introspect"]["class_uid"] == 6003 and by_type["introspect"]["activity_id"] == 2
    only = broker("export", "--since", "1h", "--type", "usage", env=env).stdout.splitlines()
    assert {json.loads(line)["type"] for line in only} == {"usage"}


# -- remote ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A real broker (gunicorn) over a populated SQLite ledger."""
    from tests.support.audit import write_audit_policies

    tmp = tmp_path_factory.mktemp("remote")
    url = f"sqlite:///{tmp / 'ledger.db'}"
    with open_ledger(url) as ledger:
        story = build_story(ledger)
    env = {"BROKER_POLICY_DIR": str(write_audit_policies(tmp / "policies")),
           "BROKER_STATE_DIR": str(tmp / "state"), "BROKER_DATABASE_URL": url}
    with running_broker(env, workers=1) as base:
        yield story, base, url


def test_remote_matches_local(remote):
    story, base, url = remote
    creds = {"BROKER_CLIENT_ID": AUDITOR[0], "BROKER_CLIENT_SECRET": AUDITOR[1]}
    for args in (["lineage", story.grandchild], ["run", "run-1"], ["principal", PRINCIPAL],
                 ["events", "--type", "usage"], ["who", "--statement", "UPDATE accounts"]):
        remote_out = broker(*args, "--json", "--url", base, env=creds)
        local_out = broker(*args, "--json", env={"BROKER_DATABASE_URL": url})
        assert remote_out.returncode == 0, remote_out.stderr
        remote_body, local_body = json.loads(remote_out.stdout), json.loads(local_out.stdout)
        if args[0] == "principal":         # the window ends at "now": compare the records
            remote_body = {k: v for k, v in remote_body.items() if k not in ("since", "until")}
            local_body = {k: v for k, v in local_body.items() if k not in ("since", "until")}
        assert remote_body == local_body, args
    human = broker("lineage", story.root, "--url", base, "--client-id", AUDITOR[0],
                   "--client-secret", AUDITOR[1])
    assert human.returncode == 0 and story.grandchild in human.stdout


def test_remote_export_pages_through_everything(remote):
    story, base, url = remote
    creds = {"BROKER_CLIENT_ID": AUDITOR[0], "BROKER_CLIENT_SECRET": AUDITOR[1]}
    remote_lines = broker("export", "--since", "1d", "--format", "ocsf", "--url", base, env=creds)
    local_lines = broker("export", "--since", "1d", "--format", "ocsf", env={"BROKER_DATABASE_URL": url})
    assert remote_lines.returncode == 0 and remote_lines.stdout == local_lines.stdout


def test_remote_refusals(remote):
    story, base, _ = remote
    wrong = broker("run", "run-1", "--url", base, "--client-id", AUDITOR[0], "--client-secret", "bad")
    assert wrong.returncode == 4 and "invalid_client" in wrong.stderr and "bad" not in wrong.stderr
    forbidden = broker("run", "run-1", "--url", base, env={"BROKER_CLIENT_ID": INTROSPECTOR[0],
                                                           "BROKER_CLIENT_SECRET": INTROSPECTOR[1]})
    assert forbidden.returncode == 4 and "access_denied" in forbidden.stderr
    missing = broker("run", "run-1", "--url", base)
    assert missing.returncode == 2 and "--client-id" in missing.stderr
    creds = {"BROKER_CLIENT_ID": AUDITOR[0], "BROKER_CLIENT_SECRET": AUDITOR[1]}
    assert broker("run", "nope", "--url", base, env=creds).returncode == 1
    assert broker("lineage", "not-an-id", "--url", base, env=creds).returncode == 2
    down = broker("run", "x", "--url", "http://127.0.0.1:9", env=creds)
    assert down.returncode == 3 and AUDITOR[1] not in down.stderr
