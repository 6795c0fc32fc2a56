"""People, as the human IdP (``kind: human-idp``) vouches for them: ID-token verification,
approver eligibility and the separation-of-duties check (``not_self``).

A person's ID token is verified by the same code as a workload's attestation — the IdP is
turned into an :class:`~broker.policy.model.IssuerConfig` (:meth:`HumanIdP.issuer_config`):
keys from its JWKS through :class:`~broker.attestation.jwks.JWKSCache` (OIDC discovery unless
``jwks_uri``), the ``alg`` allowlist, ``iss``, ``aud`` (the configured ``audience``, else the
client id), ``exp``/``nbf``/``iat`` with leeway, ``sub`` and ``iat`` required. Then the person:
the email claim (required; refused when the token says ``email_verified: false``), the groups
claim (a list, or one string) and the username claim.

Separation of duties (:func:`is_run_actor`): a run names its human actor in ``run.actor``
(GitHub ``actor``, GitLab ``user_login``) — a CI login, not an email. The person is that actor
when their IdP username claim (``preferred_username`` by default) equals it case-insensitively,
or when the human-idp's ``ci_logins`` maps that login to their email. They are established
*not* to be the actor when neither holds and there was something to compare (they have a
username, or the login is mapped). Otherwise the broker cannot tell, and ``not_self`` refuses:
it fails closed.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from broker import errors
from broker.attestation.errors import AttestationError
from broker.attestation.jwks import JWKSCache
from broker.attestation.verify import (
    MAX_TOKEN_BYTES,
    check_claims,
    check_header,
    parse_unverified,
    verify_jwt_signature,
)
from broker.policy.model import ApprovalRule, HumanIdP, claim_value

_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_GROUPS = 200


class HumanTokenRefused(errors.GrantRefused):
    """A person's ID token is not acceptable (``detail`` says why; never the token). The API
    answers it as ``invalid_token`` (401); the token endpoint as ``invalid_grant``."""


@dataclass(frozen=True)
class Person:
    """Someone the human IdP vouched for."""
    email: str                        # lower-case
    sub: str
    iss: str
    username: str | None = None
    groups: tuple[str, ...] = ()
    name: str | None = None

    def claims(self) -> dict[str, Any]:
        """What a delegation policy's ``match`` sees."""
        return {"email": self.email, "groups": list(self.groups), "username": self.username,
                "sub": self.sub}

    def record(self) -> dict[str, Any]:
        """What the ledger and the session keep (nothing secret)."""
        return {"email": self.email, "sub": self.sub, "iss": self.iss, "username": self.username,
                "groups": list(self.groups), "name": self.name}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Person:
        return cls(email=str(data["email"]), sub=str(data["sub"]), iss=str(data["iss"]),
                   username=data.get("username"), groups=tuple(data.get("groups") or ()),
                   name=data.get("name"))


def _refuse(detail: str) -> HumanTokenRefused:
    return HumanTokenRefused("the ID token is not acceptable", detail=detail)


def verify_id_token(unverified_token: str, *, idp: HumanIdP, jwks: JWKSCache,
                    audience: str | None = None, now: float | None = None) -> tuple[Person, dict[str, Any]]:
    """Verify a person's ID token from the human IdP; return the person and the claims.

    ``audience`` defaults to the IdP's API audience (``audience`` or the client id). Raises
    :class:`HumanTokenRefused`, or ``temporarily_unavailable`` when the IdP's keys cannot be
    fetched.
    """
    now = time.time() if now is None else float(now)
    if not isinstance(unverified_token, str) or not unverified_token or \
            len(unverified_token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
        raise _refuse("ID token missing or larger than 16 KiB")
    cfg = idp.issuer_config(audience=audience)
    try:
        unverified_header, unverified_claims = parse_unverified(unverified_token)
        alg = check_header(unverified_header)
        if unverified_claims.get("iss") != idp.issuer:
            raise _refuse("not an ID token of the human IdP (iss)")
        if alg not in idp.algorithms:
            raise _refuse(f"alg {alg} not allowed for the human IdP")
        key = jwks.signing_key(cfg, unverified_header.get("kid"), alg)
        claims = verify_jwt_signature(unverified_token, key=key, alg=alg, issuer=cfg)
        check_claims(cfg, claims, now)
    except HumanTokenRefused:
        raise
    except AttestationError as exc:
        raise _refuse(exc.detail) from None
    return person_from_claims(idp, claims), claims


def person_from_claims(idp: HumanIdP, claims: dict[str, Any]) -> Person:
    """The person in verified ID-token claims; refuses a token without a usable email."""
    email = claim_value(claims, idp.email_claim)
    if not isinstance(email, str) or not _EMAIL.fullmatch(email) or len(email) > 320:
        raise _refuse(f"ID token has no usable {idp.email_claim} claim")
    verified = claims.get("email_verified")
    if verified is False or (isinstance(verified, str) and verified.lower() == "false"):
        raise _refuse("the ID token's email is not verified")
    raw_groups = claim_value(claims, idp.groups_claim)
    if isinstance(raw_groups, str):
        raw_groups = [raw_groups]
    groups = tuple(dict.fromkeys(g for g in (raw_groups if isinstance(raw_groups, list) else [])
                                 if isinstance(g, str) and g and not _CONTROL.search(g)))[:MAX_GROUPS]
    username = claim_value(claims, idp.username_claim)
    name = claims.get("name")
    sub = claims.get("sub")
    return Person(email=email.lower(), sub=str(sub), iss=str(claims.get("iss")),
                  username=username if isinstance(username, str) and username else None,
                  groups=groups, name=name if isinstance(name, str) else None)


def may_approve(rule: ApprovalRule, person: Person) -> bool:
    """Whether ``person`` is one of the policy's approvers (by email or group)."""
    return person.email in rule.emails or any(g in rule.groups for g in person.groups)


def is_run_actor(idp: HumanIdP, person: Person, run_actor: str | None) -> bool | None:
    """True: ``person`` is the run's actor; False: established that they are not; None: the
    broker cannot tell (see the module docstring)."""
    if not run_actor:
        return None
    actor = run_actor.lower()
    mapped = idp.ci_logins.get(actor)
    if person.username is not None and person.username.lower() == actor:
        return True
    if mapped is not None and person.email in mapped:
        return True
    if mapped is not None or person.username is not None:
        return False
    return None
