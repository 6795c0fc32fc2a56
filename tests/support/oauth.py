"""The wire as clients speak it: RFC 8693 grant and token types, the test clients and their
credentials, token-exchange forms, and reading what the broker signed."""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

AUDIENCE = "nhi-broker-test"          # the audience the policy sets' issuers expect
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
AUDITOR = ("auditor", "auditor-secret-0123456789")
INTROSPECTOR = ("introspector", "introspector-secret-0123456789")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the tests read what the broker signed)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def exchange_form(subject_token: str, **overrides: Any) -> dict[str, str]:
    form = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
            "audience": "reports-api", "scope": "reports:read"}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}
