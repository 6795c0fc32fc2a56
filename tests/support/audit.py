"""Building ledgers for the audit tests through the ledger API, as the broker writes them.

Fan-out children (``parent_id``) and usage events (statements) are written the way the
exchange pipeline and the usage ingestion write them: ``record_mint`` with a
``CredentialRecord`` and ``append`` of ``usage`` drafts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.common.ids import new_credential_id
from broker.ledger import CredentialRecord, EventDraft, Ledger, utc_timestamp
from tests.support.policies import policy_yaml

PRINCIPAL = "github:acme/payments:ref:refs/heads/main"
EVIL_PRINCIPAL = 'github:<script>alert("p")</script>/x:ref:"><img src=x onerror=alert(1)>'
EVIL_STATEMENT = "SELECT '</code><script>alert(document.cookie)</script>' -- \x1b[2J"
AUTHORIZER = {"type": "policy", "name": "payments-deploy", "digest": "sha256:" + "ab" * 32}


def write_audit_policies(directory: Path) -> Path:
    """The API tests' policy set (an auditor that may audit, an introspector that may not)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "broker.yaml").write_text(policy_yaml("https://issuer.example.test"))
    return directory


def mint(ledger: Ledger, *, parent: str | None = None, principal: str = PRINCIPAL,
         run: dict[str, Any] | None = None, target: str = "orders-db", issued_at: int | None = None,
         ttl: int = 900) -> str:
    cid = new_credential_id()
    issued = int(time.time()) if issued_at is None else issued_at
    run = {"id": "run-1", "attempt": 1} if run is None else run
    record = CredentialRecord(credential_id=cid, parent_id=parent, principal=principal, run=run,
                              authorizer=AUTHORIZER, target=target, target_type="postgres",
                              scope="read", issued_at=issued, expires_at=issued + ttl,
                              issuer="github-actions", details={"role": f"nhb_{cid}"})
    ledger.record_mint(EventDraft(type="mint", credential_id=cid, parent_id=parent,
                                  principal=principal, run=run, authorizer=AUTHORIZER, target=target,
                                  details={"issuer": "github-actions", "ttl": ttl,
                                           "expires_at": issued + ttl}), record)
    return cid


def usage(ledger: Ledger, cid: str, statement: str, *, principal: str = PRINCIPAL,
          run: dict[str, Any] | None = None, **details: Any) -> int:
    """A usage event as the PostgreSQL log ingestion writes it (``record_usage``: the event
    plus its searchable ``usage_lines`` row)."""
    global _LINE
    _LINE += 1
    at = utc_timestamp()
    body = {"source": "test", "kind": "statement", "statement": statement, "database": "orders",
            "session_id": "6650.1", "session_line": _LINE, "client": "10.0.0.7(53422)", "at": at,
            "command_tag": statement.split()[0].upper(), "duration_ms": 2, **details}
    draft = EventDraft(type="usage", credential_id=cid, principal=principal,
                       run=run or {"id": "run-1", "attempt": 1}, authorizer=AUTHORIZER,
                       target="orders-db", details=body)
    events = ledger.record_usage([(draft, f"test:{_LINE}:{cid}", at, statement)])
    return events[0].seq


_LINE = 0


def deny(ledger: Ledger, *, principal: str = PRINCIPAL, run: dict[str, Any] | None = None) -> int:
    return ledger.append(EventDraft(type="deny", principal=principal, run=run, target="orders-db",
                                    details={"error": "unauthorized_client",
                                             "reason": "no policy allows this exchange"})).seq


@dataclass
class Story:
    """root ─┬ child0 ─ grandchild        (run-1 attempt 1)
             ├ child1 (revoked)
             └ child2 (expired/ended)
       retry                               (run-1 attempt 2) ─ retry_child
       evil                                (evil principal, run "<b>r</b>")
       + a denied attempt of run-1 (attempt 3) and of the evil principal."""
    root: str = ""
    children: list[str] = field(default_factory=list)
    grandchild: str = ""
    retry: str = ""
    retry_child: str = ""
    evil: str = ""
    root_usage: list[int] = field(default_factory=list)


def build_story(ledger: Ledger, *, root_usage: int = 12) -> Story:
    story = Story()
    story.root = mint(ledger)
    story.children = [mint(ledger, parent=story.root, target=t)
                      for t in ("orders-db", "reports-api", "billing-db")]
    story.grandchild = mint(ledger, parent=story.children[0])
    for i in range(root_usage):
        statement = "UPDATE accounts SET balance = 0" if i % 3 == 0 else f"SELECT {i} FROM orders"
        story.root_usage.append(usage(ledger, story.root, statement))
    usage(ledger, story.grandchild, "DELETE FROM sessions")
    child1 = story.children[1]
    ledger.record_revoke(child1, EventDraft(type="revoke", credential_id=child1,
                                            parent_id=story.root, principal=PRINCIPAL,
                                            details={"result": "revoked", "client": "auditor"}),
                         revoked_at=int(time.time()))
    child2 = story.children[2]
    ledger.record_end(child2, EventDraft(type="expire", credential_id=child2, parent_id=story.root,
                                         principal=PRINCIPAL, details={"reason": "expired"}),
                      ended_at=int(time.time()))
    story.retry = mint(ledger, run={"id": "run-1", "attempt": 2})
    story.retry_child = mint(ledger, parent=story.retry, run={"id": "run-1", "attempt": 2})
    deny(ledger, run={"id": "run-1", "attempt": 3})
    story.evil = mint(ledger, principal=EVIL_PRINCIPAL, run={"id": "<b>r</b>", "attempt": 1})
    usage(ledger, story.evil, EVIL_STATEMENT, principal=EVIL_PRINCIPAL,
          run={"id": "<b>r</b>", "attempt": 1})
    deny(ledger, principal=EVIL_PRINCIPAL, run={"id": "<b>r</b>", "attempt": 2})
    ledger.append(EventDraft(type="introspect", credential_id=story.root, principal=PRINCIPAL,
                             details={"client": "introspector", "active": True}))
    return story
