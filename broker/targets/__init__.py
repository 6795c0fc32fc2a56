"""Credential kinds, one module per kind behind one base (:mod:`broker.targets.base`), listed
in one registry (:mod:`broker.targets.registry`)."""
from __future__ import annotations

from broker.targets.base import (
    Capabilities,
    CredentialIssuer,
    Ended,
    IssuedCredential,
    IssueRequest,
    ReconcileReport,
    TargetKind,
)
from broker.targets.registry import KINDS, build_kinds

build_issuers = build_kinds          # the old name

__all__ = ["KINDS", "Capabilities", "CredentialIssuer", "Ended", "IssueRequest", "IssuedCredential",
           "ReconcileReport", "TargetKind", "build_issuers", "build_kinds"]
