"""Docs true to the code where a check is cheap: the /v1/events type list, run value types."""
from __future__ import annotations

import re
from pathlib import Path

from broker.ledger.events import EVENT_TYPES
from broker.policy.presets import PRESETS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_events_type_list_names_every_event_type():
    text = (DOCS / "audit.md").read_text()
    section = text.split("### `GET /v1/events`", 1)[1].split("###", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", section.split("`principal`", 1)[0]))
    assert EVENT_TYPES <= listed


def test_run_values_are_text_as_documented():
    text = (DOCS / "audit.md").read_text()
    assert '"attempt": "1"' in text           # a string, as GitHub's run_attempt claim is
    from broker.attestation.verify import render_run

    claims = {"run_id": 4242, "run_attempt": 1, "repository": "acme/payments"}
    run = render_run(PRESETS["github-actions"].run, claims)
    assert run["id"] == "4242" and run["attempt"] == "1"
    assert all(isinstance(v, str) for v in run.values())
