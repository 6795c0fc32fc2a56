"""Compiled policy documents. Built only by :mod:`broker.policy.load`; immutable afterwards."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceRef:
    """Where a document came from, for error messages: ``file:line``."""
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class IssuerConfig:
    """``kind: issuer`` — a trusted attestation issuer."""
    name: str
    preset: str                      # github-actions | gitlab-ci | kubernetes | spiffe | oidc
    issuer: str                      # exact `iss`
    audience: str                    # the `aud` the attestation must carry
    algorithms: tuple[str, ...]      # allowlist; never "none", never HS*
    principal: str                   # template, e.g. "github:{repository}:{job_workflow_ref}"
    run: dict[str, str]              # run field -> claim path (dotted for nested claims)
    required_claims: tuple[str, ...]  # must be present (besides iss, aud, exp, iat)
    jwks_uri: str | None = None      # else OIDC discovery at {issuer}/.well-known/openid-configuration
    jwks_file: str | None = None     # a local JWKS file (absolute path after loading)
    max_token_age: int | None = None  # seconds since `iat`
    leeway: int = 60                 # seconds of clock skew tolerated
    allow_extra_audiences: bool = False  # `aud` may list others besides `audience` (OIDC Core)
    source: SourceRef | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Target:
    """``kind: target`` — something credentials are minted for."""
    name: str
    type: str                        # jwt | postgres | vault-database | ...
    audience: str                    # `aud` of minted tokens
    max_ttl: int                     # seconds
    options: dict[str, Any] = field(default_factory=dict)   # kind-specific keys, validated at load
    source: SourceRef | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ClaimMatcher:
    """One entry of a policy's ``match``: claim path -> any of the compiled patterns."""
    claim: str                        # dotted path
    patterns: tuple[re.Pattern[str], ...]   # all anchored (^...$, fullmatch)
    spec: Any                         # the document's own spelling, for digests and display

    def matches(self, value: Any) -> bool:
        text = claim_text(value)
        if text is None:
            return False
        return any(p.fullmatch(text) for p in self.patterns)


#: ``max_depth`` of a policy with ``derive`` when it says none: root → child → grandchild →
#: great-grandchild. And the largest ``max_depth`` a policy may set.
DEFAULT_DERIVE_DEPTH = 3
MAX_DERIVE_DEPTH = 10


@dataclass(frozen=True)
class DeriveRule:
    """One entry of a policy's ``derive``: credentials this policy authorized (and their
    descendants) may be exchanged for a child credential for ``target``.

    ``scopes`` None: the child's scopes are a subset of its parent's. ``from_targets`` None: any
    parent target. ``max_ttl`` None: the target's ``max_ttl``. The child never outlives its
    parent, whatever these say (see :mod:`broker.exchange.derive`)."""
    target: str
    scopes: tuple[str, ...] | None = None
    max_ttl: int | None = None
    from_targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ApprovalRule:
    """A policy's ``approval``: a named person must approve each mint (docs/approvals.md).

    ``emails`` are lower-cased; ``groups`` are the names after ``group:``. ``required``
    distinct approvers must approve; ``not_self``: the run's ``actor`` may not approve;
    ``expires_in``: seconds a request waits for its decision before it is void."""
    emails: tuple[str, ...]
    groups: tuple[str, ...]
    required: int = 1
    not_self: bool = True
    expires_in: int = 1800

    @property
    def approvers(self) -> tuple[str, ...]:
        """The entries as written in the policy (``group:<name>`` or an email)."""
        return (*(f"group:{g}" for g in self.groups), *self.emails)


#: Subject tokens a delegation policy may accept (``may_act.subject_tokens``).
DELEGATION_SUBJECT_TOKENS = ("delegation", "id_token")


@dataclass(frozen=True)
class MayAct:
    """A policy's ``may_act``: which agents may act for the person in the subject token.

    The policy's own ``issuer`` is the human IdP and its ``match`` is judged against the
    person; ``issuer``/``match`` here are judged against the actor's attestation
    (the RFC 8693 ``actor_token``). ``subject_tokens``: ``delegation`` (a broker-issued
    delegation token) and/or ``id_token`` (the person's ID token itself)."""
    issuer: str
    match: tuple[ClaimMatcher, ...]
    subject_tokens: tuple[str, ...] = ("delegation",)


@dataclass(frozen=True)
class HumanIdP:
    """``kind: human-idp`` — the OpenID Connect provider people sign in with (approvers,
    people granting delegations). Never a source of workload attestations."""
    name: str
    issuer: str                       # exact `iss`
    client_id: str
    client_secret_env: str | None     # exactly one of these two: the secret is never inline
    client_secret_file: str | None    # absolute path after loading
    email_claim: str = "email"
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"   # compared with a run's `actor` (not_self)
    audience: str | None = None       # `aud` of ID tokens presented to the API/CLI (default client_id)
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_uri: str | None = None       # else OIDC discovery
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    ci_logins: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run actor -> emails (lower-case)
    delegation_max_ttl: int = 86400
    leeway: int = 60
    source: SourceRef | None = field(default=None, compare=False)

    @property
    def api_audience(self) -> str:
        return self.audience or self.client_id

    def issuer_config(self, *, audience: str | None = None) -> IssuerConfig:
        """The IdP as an :class:`IssuerConfig`, so its ID tokens are verified by the same code
        (JWKS cache, signature and claim checks) as attestations. ``audience`` defaults to
        :attr:`api_audience`; the web sign-in passes the client id."""
        return IssuerConfig(
            name=f"human-idp:{self.name}", preset="oidc", issuer=self.issuer,
            audience=audience or self.api_audience, algorithms=self.algorithms,
            principal="{sub}", run={}, required_claims=("sub", "iat"), jwks_uri=self.jwks_uri,
            leeway=self.leeway, source=self.source)


@dataclass(frozen=True)
class Policy:
    """``kind: policy`` — who may get which target, with which scopes, for how long."""
    name: str
    issuer: str                       # name of an IssuerConfig
    targets: tuple[str, ...]          # names of Targets
    match: tuple[ClaimMatcher, ...]
    scopes: tuple[str, ...] | None    # None: the policy grants no scopes and accepts no scope request
    max_ttl: int | None
    digest: str                       # "sha256:<hex>" over the canonical document
    extra: dict[str, Any] = field(default_factory=dict)  # keys later issues add (derive, approval, ...)
    source: SourceRef | None = field(default=None, compare=False)
    derive: tuple[DeriveRule, ...] = ()   # compiled ``derive`` (fan-out); empty: no children
    max_depth: int | None = None          # ``max_depth``: longest derivation chain (None: default)
    approval: ApprovalRule | None = None  # ``approval``: a person approves each mint
    may_act: MayAct | None = None         # ``may_act``: agents acting for the person (delegation)


@dataclass(frozen=True)
class Client:
    """``kind: client`` — a caller of introspection, revocation and the audit API (HTTP Basic)."""
    name: str
    secret_sha256: str                # lower-case hex
    may: frozenset[str]               # subset of {"audit", "introspect", "revoke"}
    source: SourceRef | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PolicySet:
    issuers: dict[str, IssuerConfig]
    targets: dict[str, Target]
    policies: tuple[Policy, ...]      # in load order: file name, then document order
    clients: dict[str, Client]
    digest: str                       # "sha256:<hex>" over all policy digests in order
    human_idp: HumanIdP | None = None  # ``kind: human-idp`` (at most one)

    def issuers_for_iss(self, iss: str) -> list[IssuerConfig]:
        return [i for i in self.issuers.values() if i.issuer == iss]

    def max_target_ttl(self) -> int:
        return max((t.max_ttl for t in self.targets.values()), default=3600)


@dataclass(frozen=True)
class Decision:
    """What :func:`broker.policy.evaluate` concludes. ``allowed`` False carries the error class."""
    allowed: bool
    policy: Policy | None = None
    target: Target | None = None
    scopes: tuple[str, ...] = ()
    ttl: int = 0                      # granted lifetime in seconds (min of policy, target, request)
    error: type | None = None         # a broker.errors class when refused
    reason: str = ""                  # detail for the ledger/log (never a secret)


def claim_value(claims: dict[str, Any], path: str) -> Any:
    """Look up a dotted claim path (``kubernetes.io.namespace`` tries the literal key first)."""
    if path in claims:
        return claims[path]
    node: Any = claims
    parts = path.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(node, dict):
            return None
        # greedily match keys that themselves contain dots (e.g. "kubernetes.io")
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                node = node[key]
                i = j
                break
        else:
            return None
    return node


def claim_text(value: Any) -> str | None:
    """The string form used for matching and templates; None for absent or structured values."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    return None
