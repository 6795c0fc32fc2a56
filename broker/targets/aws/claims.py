"""The web-identity token an ``aws`` target signs for one mint, as AWS reads it. Pure functions.

AWS (``AssumeRoleWithWebIdentity`` against an IAM OIDC provider for the broker's issuer) checks
the signature against the broker's JWKS (found through ``/.well-known/openid-configuration``),
``iss``, ``aud`` (one of the provider's client ids: ``sts.amazonaws.com``) and ``exp``, and then
reads two claims of its own:

* ``https://aws.amazon.com/source_identity``: the session's **source identity** — the credential
  id. It cannot be changed for the life of the session, travels through role chaining and is
  written by CloudTrail into every record the session makes (``sessionContext.sourceIdentity``).
* ``https://aws.amazon.com/tags``: ``principal_tags`` (each value a list of one string) and
  ``transitive_tag_keys``, the session tags: ``credential_id``, ``run_id``, ``authorizer``
  (``policy:NAME``, ``human:APPROVAL_ID``, ``derive:NAME``, ``delegation:GRANT_ID``),
  ``policy_digest`` and the target's own ``tags``, rendered from the run.

``jti`` is the credential id too, and ``sub`` the principal. The token deliberately has no
``target`` claim: presented back to the broker as a parent credential it does not match its
ledger record and is refused (it is a key for STS, not a broker credential).
"""
from __future__ import annotations

from typing import Any

from broker.targets.aws.schema import MAX_TAG_VALUE, PLACEHOLDER, STS_AUDIENCE, TAG_UNSAFE

SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"
TAGS_CLAIM = "https://aws.amazon.com/tags"
#: The web-identity token of an ``assume`` mint only has to live through one STS call.
ASSUME_TOKEN_SECONDS = 300


def tag_value(text: str) -> str:
    """``text`` as a session tag value: characters AWS refuses become ``_``, at most 256."""
    return TAG_UNSAFE.sub("_", text)[:MAX_TAG_VALUE]


def authorizer_tag(authorizer: Any) -> str | None:
    """What allowed the mint, in a tag value: ``policy:NAME``, ``human:APPROVAL_ID``,
    ``derive:NAME`` or ``delegation:GRANT_ID``."""
    if not isinstance(authorizer, dict):
        return None
    kind = str(authorizer.get("type") or "unknown")
    if kind == "human":
        ident = authorizer.get("approval_id")
    elif kind == "delegation":
        ident = authorizer.get("grant_id") or authorizer.get("granted_by")
    else:
        ident = authorizer.get("name")
    return f"{kind}:{ident}" if ident else kind


def policy_digest(authorizer: Any) -> str | None:
    if not isinstance(authorizer, dict):
        return None
    digest = authorizer.get("digest")
    if not digest and isinstance(authorizer.get("policy"), dict):
        digest = authorizer["policy"].get("digest")
    return str(digest) if digest else None


def render_tag(template: str, *, run: dict[str, Any], principal: str, target: str) -> str | None:
    """A configured tag's value; None when a run field it names is absent (the tag is left
    out, so an IAM condition on it fails closed rather than matching an empty value)."""
    missing = False

    def field(match: Any) -> str:
        nonlocal missing
        name = match.group(1)
        if name == "principal":
            return principal
        if name == "target":
            return target
        value = run.get(name[len("run."):]) if isinstance(run, dict) else None
        if value is None or isinstance(value, (dict, list)):
            missing = True
            return ""
        return str(value)

    text = PLACEHOLDER.sub(field, template)
    return None if missing else tag_value(text)


def session_tags(*, credential_id: str, principal: str, run: dict[str, Any],
                 authorizer: dict[str, Any], target: str,
                 configured: dict[str, str] | None) -> dict[str, str]:
    """The session's tags, the broker's first (see the module docstring)."""
    tags: dict[str, str] = {"credential_id": credential_id}
    run_id = run.get("id") if isinstance(run, dict) else None
    if run_id is not None:
        tags["run_id"] = tag_value(str(run_id))
    authz = authorizer_tag(authorizer)
    if authz:
        tags["authorizer"] = tag_value(authz)
    digest = policy_digest(authorizer)
    if digest:
        tags["policy_digest"] = tag_value(digest)
    for key, template in (configured or {}).items():
        value = render_tag(template, run=run, principal=principal, target=target)
        if value is not None:
            tags[key] = value
    return tags


def web_identity_claims(*, issuer: str, principal: str, credential_id: str, tags: dict[str, str],
                        transitive: bool, issued_at: int, expires_at: int) -> dict[str, Any]:
    """The claims of the web-identity JWT (signed by the broker's key with ``typ: JWT``)."""
    return {
        "iss": issuer,
        "sub": principal,
        "aud": STS_AUDIENCE,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_at,
        "jti": credential_id,
        SOURCE_IDENTITY_CLAIM: credential_id,
        TAGS_CLAIM: {
            "principal_tags": {key: [value] for key, value in tags.items()},
            "transitive_tag_keys": list(tags) if transitive else [],
        },
    }
