"""Helpers of the attestation tests: issuer configs as the policy loader builds them, token surgery."""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from broker.devtools.dev_issuer import DevIssuer
from broker.policy.model import IssuerConfig, PolicySet
from broker.policy.presets import PRESETS

AUDIENCE = "nhi-broker"


def issuer_config(dev: DevIssuer | str, *, preset: str = "github-actions", name: str | None = None,
                  audience: str = AUDIENCE, **overrides: Any) -> IssuerConfig:
    """An IssuerConfig as the policy loader would build it from ``preset`` (overrides win)."""
    p = PRESETS[preset]
    config = IssuerConfig(
        name=name or preset.split("-")[0],
        preset=preset,
        issuer=dev if isinstance(dev, str) else dev.issuer,
        audience=audience,
        algorithms=p.algorithms,
        principal=p.principal,
        run=dict(p.run),
        required_claims=p.required_claims,
    )
    return dataclasses.replace(config, **overrides)


def policy_set(*issuers: IssuerConfig) -> PolicySet:
    return PolicySet(issuers={i.name: i for i in issuers}, targets={}, policies=(), clients={},
                     digest="sha256:" + "0" * 64)


def b64url(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")))


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(payload))), signature)


def with_header(token: str, **changes: Any) -> str:
    """The same payload and signature under an edited header (a value of None drops a member)."""
    header, _, _ = segments(token)
    header.update(changes)
    header = {k: v for k, v in header.items() if v is not None}
    _, payload_segment, signature = token.split(".")
    return f"{b64url_json(header)}.{payload_segment}.{signature}"


def with_claims(token: str, **changes: Any) -> str:
    """The same header and signature over an edited payload (so the signature no longer fits)."""
    _, claims, _ = segments(token)
    claims.update(changes)
    header_segment, _, signature = token.split(".")
    return f"{header_segment}.{b64url_json(claims)}.{signature}"
