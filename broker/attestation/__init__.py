"""Attestation: verifying a workload's subject token (issuer presets, JWKS, replay guard)."""
from __future__ import annotations

from broker.attestation.errors import AttestationError
from broker.attestation.jwks import JWKSCache
from broker.attestation.replay import (
    RedisReplayGuard,
    ReplayGuard,
    ReplayStoreUnavailable,
    SQLiteReplayGuard,
    open_replay_guard,
)
from broker.attestation.verify import Attestation, verify_subject_token

__all__ = [
    "Attestation",
    "AttestationError",
    "JWKSCache",
    "RedisReplayGuard",
    "ReplayGuard",
    "ReplayStoreUnavailable",
    "SQLiteReplayGuard",
    "open_replay_guard",
    "verify_subject_token",
]
