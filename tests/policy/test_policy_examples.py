"""What ships with the broker checks: every example of ``policies/`` on its own, the
``human-idp`` block of docs/approvals.md, the ``vault-database`` example of docs/vault.md
without ``connect`` (issue 16, issue 13); ``broker policy check FILE`` takes a single file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "policies").rglob("*.yaml"))


def policy_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", "policy", "check", "--offline", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("BROKER_")})


def yaml_block(doc: str, containing: str) -> str:
    """The first fenced ```yaml block of ``docs/<doc>`` that contains ``containing``."""
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return next(block for block in blocks if containing in block)


def test_the_examples_are_found():
    assert {p.name for p in EXAMPLES} >= {"github-actions.yaml", "gitlab-ci.yaml", "kubernetes.yaml",
                                          "spiffe.yaml", "approvals.yaml", "demo.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_each_shipped_example_checks_on_its_own(example):
    result = policy_check(example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_the_human_idp_defaults_block_of_the_approvals_doc_checks(tmp_path):
    path = tmp_path / "human-idp.yaml"
    path.write_text(yaml_block("approvals.md", "kind: human-idp"))
    result = policy_check(path)
    assert result.returncode == 0, result.stderr
    assert "human-idp corp" in result.stdout


def test_the_vault_database_example_loads_without_connect(tmp_path):
    from broker.policy import load_policy_text

    example = yaml_block("vault.md", "type: vault-database")
    without = "\n".join(line for line in example.splitlines() if not line.startswith("connect:"))
    target = load_policy_text(without).targets["payments-db-vault"]
    assert "connect" not in target.options
    assert target.options["role"] == "payments-readonly" and target.options["mount"] == "database"


def test_policy_check_of_one_file_reports_its_problems(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text("kind: target\nname: t\ntype: jwt\n")
    result = policy_check(path)
    assert result.returncode == 1
    assert f"{path}:1: target 't': missing required key 'max_ttl'" in result.stderr


def test_policy_check_of_a_missing_path_says_so(tmp_path):
    result = policy_check(tmp_path / "nope")
    assert result.returncode == 1 and "does not exist" in result.stderr
