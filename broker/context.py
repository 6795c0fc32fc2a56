"""The resources one broker process uses, built once by ``create_app`` (or the CLI)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from broker.attestation import JWKSCache
from broker.issuers import CredentialIssuer
from broker.ledger import Ledger
from broker.policy import PolicySet
from broker.signing import Signer

log = logging.getLogger("broker")


@dataclass
class BrokerContext:
    issuer: str                       # the broker's own `iss`
    policy_set: PolicySet
    signer: Signer
    ledger: Ledger
    jwks: JWKSCache
    replay: Any                       # a ReplayGuard
    issuers: dict[str, CredentialIssuer]
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        # Background work (the reaper) first, then the issuers' pools, then the stores.
        closers = [getattr(x, "close", None) for x in (*self.extras.values(), *self.issuers.values())]
        for closer in (*closers, getattr(self.ledger, "close", None), getattr(self.replay, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:  # noqa: BLE001 - closing is best effort
                    log.debug("close failed", exc_info=True)
