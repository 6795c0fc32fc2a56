"""Helpers shared by the policy tests (imported as ``tests.policy.policy_support``)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from broker.policy import PolicyError, Problem, load_policy_files

# The documents every case builds on: issuer "gha", target "reports-api".
BASE = """\
kind: issuer
name: gha
preset: github-actions
audience: https://broker.example.com
---
kind: target
name: reports-api
type: jwt
audience: https://reports.internal
max_ttl: 15m
"""

CLIENT_SECRET_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


class PolicyFiles:
    """Write ``base.yaml`` (issuer gha, target reports-api) and case files into ``tmp_path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / "base.yaml"
        self.base.write_text(BASE)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(dedent(text))
        return path

    def load(self, text: str, name: str = "case.yaml"):
        return load_policy_files([self.base, self.write(name, text)])

    def problems(self, text: str, name: str = "case.yaml") -> list[Problem]:
        with pytest.raises(PolicyError) as info:
            self.load(text, name)
        return info.value.problems
