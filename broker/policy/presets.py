"""Issuer presets: each platform's real `iss`, signing algorithms and claim names.

A ``kind: issuer`` document names a preset; every field here may be overridden in the document.
Claim names follow the platforms' documentation:
- GitHub Actions OIDC: https://docs.github.com/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect
- GitLab CI ID tokens: https://docs.gitlab.com/ci/secrets/id_token_authentication/
- Kubernetes projected service-account tokens (claims under ``kubernetes.io``)
- SPIFFE JWT-SVID (``sub`` is the SPIFFE ID)
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Algorithms an issuer may be allowed. "none" and every HMAC algorithm are absent on purpose:
# a shared secret cannot prove which workload signed.
ASYMMETRIC_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})

# Claims every attestation must carry whatever the preset.
BASE_REQUIRED_CLAIMS = ("iss", "aud", "exp")


@dataclass(frozen=True)
class Preset:
    name: str
    issuer: str | None                       # None: the document must say `issuer:`
    algorithms: tuple[str, ...]
    principal: str                           # "{claim}" template, dotted paths allowed
    run: dict[str, str] = field(default_factory=dict)   # run field -> claim path
    required_claims: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "github-actions": Preset(
        name="github-actions",
        issuer="https://token.actions.githubusercontent.com",
        algorithms=("RS256",),
        principal="github:{repository}:{job_workflow_ref}",
        run={
            "id": "run_id",
            "attempt": "run_attempt",
            "repository": "repository",
            "workflow": "workflow_ref",
            "sha": "sha",
            "ref": "ref",
            "actor": "actor",
            "event": "event_name",
            "environment": "environment",
        },
        required_claims=("iat", "sub", "repository", "job_workflow_ref", "run_id"),
    ),
    "gitlab-ci": Preset(
        name="gitlab-ci",
        issuer="https://gitlab.com",
        algorithms=("RS256",),
        principal="gitlab:{project_path}:{ci_config_ref_uri}",
        run={
            "id": "pipeline_id",
            "job": "job_id",
            "repository": "project_path",
            "sha": "sha",
            "ref": "ref",
            "actor": "user_login",
            "event": "pipeline_source",
            "environment": "environment",
        },
        required_claims=("iat", "sub", "project_path", "pipeline_id", "ci_config_ref_uri"),
    ),
    "kubernetes": Preset(
        name="kubernetes",
        issuer=None,
        algorithms=("RS256", "ES256"),
        principal="k8s:{kubernetes.io.namespace}:{kubernetes.io.serviceaccount.name}",
        run={
            "id": "kubernetes.io.pod.uid",
            "pod": "kubernetes.io.pod.name",
            "namespace": "kubernetes.io.namespace",
            "service_account": "kubernetes.io.serviceaccount.name",
        },
        required_claims=("iat", "sub", "kubernetes.io"),
    ),
    "spiffe": Preset(
        name="spiffe",
        issuer=None,
        algorithms=("RS256", "ES256", "ES384", "PS256"),
        principal="{sub}",
        run={},
        required_claims=("sub",),
    ),
    "oidc": Preset(
        name="oidc",
        issuer=None,
        algorithms=("RS256", "ES256"),
        principal="{sub}",
        run={},
        required_claims=("iat", "sub"),
    ),
}
