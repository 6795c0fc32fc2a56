"""Target kind ``aws``: an STS session per mint, named by the credential id, tagged with the run
and the authorizer, and revoked by a deny statement on the role.

A mint (``mode: assume``, the default) signs a web-identity JWT for this one credential with the
broker's own key (:mod:`broker.targets.aws.claims`: ``sub`` the principal, ``jti`` and source
identity the credential id, session tags), calls ``AssumeRoleWithWebIdentity`` with it through
boto3 (``RoleSessionName`` = ``session_name_prefix`` + credential id, ``DurationSeconds`` = the
credential's lifetime, the target's session policy and those of the granted scopes) and returns

    {"type": "aws", "access_key_id", "secret_access_key", "session_token", "expiration",
     "region", "assumed_role_arn"}

to the client alone. The ledger gets the access key id, the assumed-role ARN and id, the
expiration, the session name, source identity and tags and the SHA-256 of the session token
and of the web-identity token — never the secret access key or a token. ``mode: token`` returns
the signed web-identity token instead (``{"type": "aws-web-identity", "web_identity_token",
"role_arn", "role_session_name", "region", "expires_at"}``), for callers that reach STS
themselves; STS then bounds the session by the role's ``MaxSessionDuration``, not by the broker.

The broker's own AWS calls use boto3's standard configuration: the credential chain (IAM calls
only: ``AssumeRoleWithWebIdentity`` is unsigned, so minting needs no AWS credentials at all),
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_STS`` / ``AWS_ENDPOINT_URL_IAM``, the config file,
``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``. ``sts_endpoint_env`` names a variable that, when set,
overrides the STS endpoint of that target only.

AWS errors become domain errors with the AWS error code and request id in ``detail`` (for the
log and the ``deny`` event; a token is never quoted): throttling, 5xx and an unreachable
endpoint are :class:`~broker.errors.BackendUnavailable` (503, retry later); a refusal (access
denied, an invalid or expired token, a bad session policy, a role or duration STS will not
grant) is :class:`~broker.errors.BackendMisconfigured` (``invalid_target``).

**Revocation** (:meth:`AWSKind.revoke`): AWS cannot end one session, so the credential id is
added to the deny statement of the role's inline policy ``deny_policy_name``
(:mod:`broker.targets.aws.denylist`: ``iam:GetRolePolicy`` then ``iam:PutRolePolicy``, read back
to make sure a concurrent revocation did not overwrite it), pruning entries whose sessions have
ended. The broker needs ``iam:GetRolePolicy`` and ``iam:PutRolePolicy`` on the role; without
them revocation fails with ``invalid_target`` and the ledger records nothing (docs/cloud.md).
A credential already past its expiry needs nothing at AWS.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.targets.aws import claims as web_identity
from broker.targets.aws import denylist
from broker.targets.aws.schema import (
    DEFAULT_DENY_POLICY,
    KIND,
    MAX_SESSION_POLICY,
    MIN_SESSION_SECONDS,
    POLICY_KEYS,
    compact_json,
)
from broker.targets.base import Capabilities, IssuedCredential, IssueRequest, TargetKind

if TYPE_CHECKING:
    from broker.keys import Signer
    from broker.ledger.events import CredentialRecord
    from broker.policy.model import Target

log = logging.getLogger("broker.targets.aws")

#: Seconds an exchange may take before a credential granted STS's minimum no longer gets it.
CLOCK_SLACK_SECONDS = 5

#: AWS error codes that mean "later": throttling and AWS's own failures.
RETRY_LATER = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "RequestThrottledException", "SlowDown",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalError",
    "ServiceFailure", "IDPCommunicationError", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete",
})
#: How often a revocation re-reads the deny policy after writing it (a concurrent writer may
#: have replaced it with a document lacking this credential).
DENY_WRITE_ATTEMPTS = 4
_JWT_LIKE = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*")


def _rfc3339(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def role_name_of(role_arn: str) -> str:
    """``arn:aws:iam::123456789012:role/path/deploy`` → ``deploy``."""
    return role_arn.rsplit("/", 1)[-1]


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise errors.BackendMisconfigured(
            "target is not usable",
            detail="aws targets need boto3: pip install 'nhi-broker[aws]'") from None
    return boto3


def aws_error(exc: BaseException, *, call: str, target: str) -> errors.BrokerError:
    """A botocore failure as a domain error; the detail names the AWS error code and request
    id, never a token (STS messages do not quote it; anything token-shaped is cut anyway)."""
    from botocore import exceptions as botocore_errors

    if isinstance(exc, botocore_errors.ClientError):
        error = exc.response.get("Error") or {}
        meta = exc.response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "Unknown")
        message = _JWT_LIKE.sub("<token>", str(error.get("Message") or ""))[:300]
        status = int(meta.get("HTTPStatusCode") or 0)
        detail = (f"aws target {target!r}: {call} refused: {code} (HTTP {status}"
                  f"{', request ' + str(meta['RequestId']) if meta.get('RequestId') else ''})"
                  f"{': ' + message if message else ''}")
        if code in RETRY_LATER or status >= 500:
            return errors.BackendUnavailable("the credential backend (AWS) is unavailable; nothing "
                                             "was issued", detail=detail, reason="aws_unavailable")
        return errors.BackendMisconfigured("target is not usable", detail=detail,
                                           reason="aws_refused")
    if isinstance(exc, (botocore_errors.EndpointConnectionError, botocore_errors.ConnectionError,
                        botocore_errors.ConnectTimeoutError, botocore_errors.ReadTimeoutError)):
        return errors.BackendUnavailable("the credential backend (AWS) is unavailable; nothing was "
                                         "issued", detail=f"aws target {target!r}: {call}: cannot "
                                         f"reach AWS ({type(exc).__name__})", reason="aws_unreachable")
    if isinstance(exc, (botocore_errors.NoCredentialsError, botocore_errors.PartialCredentialsError,
                        botocore_errors.NoRegionError, botocore_errors.ParamValidationError,
                        botocore_errors.ProfileNotFound)):
        return errors.BackendMisconfigured("target is not usable",
                                           detail=f"aws target {target!r}: {call}: "
                                                  f"{type(exc).__name__}", reason="aws_misconfigured")
    return errors.BackendUnavailable("the credential backend (AWS) is unavailable; nothing was issued",
                                     detail=f"aws target {target!r}: {call} failed: "
                                            f"{type(exc).__name__}", reason="aws_unavailable")


class AWSKind(TargetKind):
    """Mints STS sessions and revokes them by deny statement. Built once per process by
    ``create_app``, which hands it the broker's signer (``signs``)."""

    name = KIND
    policy_keys = POLICY_KEYS
    #: Sessions end at AWS on their own: nothing to reap, reconcile or orphan. `broker policy
    #: check` asks IAM about the role (MaxSessionDuration, trust policy).
    capabilities = Capabilities(signs=True, check_backend=True)

    def __init__(self, *, issuer: str | None = None) -> None:
        super().__init__()
        self._signer: Signer | None = None
        self._issuer = issuer
        self._session: Any = None
        self._clients: dict[tuple[str, str, str | None], Any] = {}
        self._lock = threading.Lock()
        self._deny_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_config(cls, config: Any) -> AWSKind:
        """The issuer is the signer's (:meth:`use_signer`); the configuration's is kept for
        ``broker policy check``, which builds kinds without one."""
        from broker import config as cfg

        try:
            issuer: str | None = cfg.issuer(config).rstrip("/")
        except Exception:  # noqa: BLE001 - no issuer configured: only the checks miss it
            issuer = None
        return cls(issuer=issuer)

    def use_signer(self, signer: Signer) -> None:
        self._signer = signer
        self._issuer = signer.issuer.rstrip("/")

    # -- boto3 -------------------------------------------------------------------------------
    def client(self, service: str, region: str, *, endpoint_url: str | None = None) -> Any:
        """One boto3 client per service, region and endpoint (clients are thread-safe; the
        session that makes them is not)."""
        key = (service, region, endpoint_url)
        client = self._clients.get(key)
        if client is not None:
            return client
        boto3 = _boto3()
        from botocore import UNSIGNED
        from botocore.config import Config

        # AssumeRoleWithWebIdentity is unsigned: the STS client resolves no credentials.
        config = Config(signature_version=UNSIGNED) if service == "sts" else None
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if self._session is None:
                    self._session = boto3.session.Session()
                client = self._session.client(service, region_name=region, endpoint_url=endpoint_url,
                                              config=config)
                self._clients[key] = client
        return client

    def sts_client(self, target: Target) -> Any:
        env = target.options.get("sts_endpoint_env")
        endpoint = (os.environ.get(env) or None) if env else None
        return self.client("sts", target.options["region"], endpoint_url=endpoint)

    def iam_client(self, region: str) -> Any:
        return self.client("iam", region)

    # -- issue -------------------------------------------------------------------------------
    def issue(self, request: IssueRequest) -> IssuedCredential:
        target = request.target
        options = target.options
        if self._signer is None or not self._issuer:
            raise errors.BackendMisconfigured(
                "target is not usable",
                detail=f"aws target {target.name!r}: the kind has no signer (built without "
                       f"build_kinds(..., signer=...))")
        now = int(time.time())
        duration = request.expires_at - now
        if (duration < MIN_SESSION_SECONDS <= request.expires_at - request.issued_at
                and now - request.issued_at <= CLOCK_SLACK_SECONDS):
            # granted exactly STS's floor, and the exchange itself took a second or two: the
            # session may outlast the credential by those seconds (its expiry is recorded)
            duration = MIN_SESSION_SECONDS
        if duration < MIN_SESSION_SECONDS:
            raise errors.TargetRefused(
                f"aws sessions last at least {MIN_SESSION_SECONDS} s; this credential could "
                f"last {max(duration, 0)} s",
                detail=f"aws target {target.name!r}: lifetime {duration}s is below STS's "
                       f"{MIN_SESSION_SECONDS}s (a shorter ttl was asked for, or the parent "
                       f"expires sooner)", reason="ttl_too_short")
        mode = options.get("mode", "assume")
        session_name = f"{options.get('session_name_prefix') or ''}{request.credential_id}"
        tags = web_identity.session_tags(
            credential_id=request.credential_id, principal=request.principal, run=request.run,
            authorizer=request.authorizer, target=target.name, configured=options.get("tags"))
        token_expires = request.expires_at if mode == "token" else \
            min(request.expires_at, now + web_identity.ASSUME_TOKEN_SECONDS)
        claims = web_identity.web_identity_claims(
            issuer=self._issuer, principal=request.principal, credential_id=request.credential_id,
            tags=tags, transitive=bool(options.get("transitive_tags", True)), issued_at=now,
            expires_at=token_expires)
        token = self._signer.sign(claims, typ="JWT")      # SigningUnavailable propagates
        details: dict[str, Any] = {
            "aws_mode": mode, "role_arn": options["role_arn"], "region": options["region"],
            "session_name": session_name, "source_identity": request.credential_id,
            "session_tags": tags, "web_identity_token_sha256": _sha256(token),
        }
        if mode == "token":
            secret = {"type": "aws-web-identity", "web_identity_token": token,
                      "role_arn": options["role_arn"], "role_session_name": session_name,
                      "region": options["region"], "expires_at": _rfc3339(request.expires_at)}
            return IssuedCredential(secret=secret, details=details)

        arguments: dict[str, Any] = {"RoleArn": options["role_arn"], "RoleSessionName": session_name,
                                     "WebIdentityToken": token, "DurationSeconds": duration}
        policy = session_policy(target, request.scopes)
        if policy is not None:
            arguments["Policy"] = policy
            details["session_policy_sha256"] = _sha256(policy)
        try:
            answer = self.sts_client(target).assume_role_with_web_identity(**arguments)
        except errors.BrokerError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore's failures, mapped (never re-raised raw)
            mapped = aws_error(exc, call="AssumeRoleWithWebIdentity", target=target.name)
            log.warning("%s", mapped.detail)
            raise mapped from None
        credentials = answer.get("Credentials") or {}
        user = answer.get("AssumedRoleUser") or {}
        access_key_id, secret_key = credentials.get("AccessKeyId"), credentials.get("SecretAccessKey")
        session_token = credentials.get("SessionToken")
        if not (access_key_id and secret_key and session_token):
            raise errors.BackendUnavailable(
                "the credential backend (AWS) is unavailable; nothing was issued",
                detail=f"aws target {target.name!r}: STS answered without credentials")
        expiration = _rfc3339(credentials.get("Expiration") or request.expires_at)
        details.update({
            "access_key_id": access_key_id, "assumed_role_arn": user.get("Arn"),
            "assumed_role_id": user.get("AssumedRoleId"), "aws_expiration": expiration,
            "session_token_sha256": _sha256(session_token),
            "packed_policy_size": answer.get("PackedPolicySize"),
        })
        secret = {"type": "aws", "access_key_id": access_key_id, "secret_access_key": secret_key,
                  "session_token": session_token, "expiration": expiration,
                  "region": options["region"], "assumed_role_arn": user.get("Arn")}
        # No undo: STS cannot delete a session, and none is needed. If the mint cannot be
        # recorded, the keys above never leave this process (the client gets an error, not the
        # secret), so nobody can use the session, which AWS ends by itself at `expiration`
        # (at most the target's max_ttl). Deny-listing it would need IAM on every ledger
        # failure — precisely when the broker should do less, not more.
        return IssuedCredential(secret=secret, details=details, undo=None)

    # -- revoke ------------------------------------------------------------------------------
    def revoke(self, record: CredentialRecord) -> None:
        """Deny the credential's sessions on the role (see the module docstring); idempotent."""
        if record.expires_at <= time.time() - denylist.EXPIRY_SLACK:
            return                      # the session already ended at AWS
        target = self._targets.get(record.target)
        role_arn = record.details.get("role_arn") or (target.options["role_arn"] if target else None)
        if not role_arn:
            raise errors.BackendMisconfigured(
                "the credential's backend is not configured",
                detail=f"aws credential {record.credential_id}: no role_arn recorded")
        region = record.details.get("region") or (target.options["region"] if target else "us-east-1")
        policy_name = (target.options.get("deny_policy_name") if target else None) or DEFAULT_DENY_POLICY
        source_identity = str(record.details.get("source_identity") or record.credential_id)
        self.deny(role_arn, source_identity, expires_at=record.expires_at, region=region,
                  policy_name=policy_name, target=record.target)

    def deny(self, role_arn: str, source_identity: str, *, expires_at: int, region: str,
             policy_name: str = DEFAULT_DENY_POLICY, target: str = "?") -> int:
        """Add ``source_identity`` to the role's deny statement; returns how many expired
        entries were pruned."""
        role = role_name_of(role_arn)
        iam = self.iam_client(region)
        with self._lock:
            lock = self._deny_locks.setdefault(f"{role_arn}/{policy_name}", threading.Lock())
        with lock:
            for attempt in range(DENY_WRITE_ATTEMPTS):
                document = self._read_policy(iam, role, policy_name, target)
                if source_identity in denylist.denied(document) and attempt:
                    return 0
                try:
                    updated, pruned = denylist.with_denied(document, source_identity,
                                                           expires_at=expires_at, now=time.time())
                except denylist.DenyListFull as exc:
                    raise errors.BackendMisconfigured(
                        "the credential could not be revoked at AWS",
                        detail=f"aws target {target!r}: role {role} policy {policy_name}: {exc}; "
                               f"shorten max_ttl or use another deny_policy_name",
                        reason="aws_deny_list_full") from None
                try:
                    iam.put_role_policy(RoleName=role, PolicyName=policy_name,
                                        PolicyDocument=compact_json(updated))
                except Exception as exc:  # noqa: BLE001 - botocore's failures, mapped
                    raise aws_error(exc, call="iam:PutRolePolicy", target=target) from None
                if source_identity in denylist.denied(self._read_policy(iam, role, policy_name, target)):
                    log.info("aws session denied: source_identity=%s role=%s policy=%s pruned=%d",
                             source_identity, role, policy_name, pruned)
                    return pruned
                time.sleep(random.uniform(0.05, 0.3))       # another broker wrote at once: again
        raise errors.BackendUnavailable(
            "the credential could not be revoked at AWS; try again",
            detail=f"aws target {target!r}: role {role} policy {policy_name} kept changing under "
                   f"the revocation of {source_identity}", reason="aws_unavailable")

    @staticmethod
    def _read_policy(iam: Any, role: str, policy_name: str, target: str) -> dict[str, Any]:
        try:
            answer = iam.get_role_policy(RoleName=role, PolicyName=policy_name)
        except Exception as exc:  # noqa: BLE001 - botocore's failures, mapped
            code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
            if code == "NoSuchEntity":
                # No such policy yet — or no such role, which the put then says.
                return denylist.parse_document(None)
            raise aws_error(exc, call="iam:GetRolePolicy", target=target) from None
        try:
            return denylist.parse_document(answer.get("PolicyDocument"))
        except ValueError as exc:
            raise errors.BackendMisconfigured(
                "the credential could not be revoked at AWS",
                detail=f"aws target {target!r}: role {role} policy {policy_name} is not a policy "
                       f"document ({exc})") from None

    # -- capabilities.check_backend ----------------------------------------------------------
    def backend_warnings(self, target: Target) -> list[str]:
        """What ``broker policy check`` says of the target's role when IAM answers: a
        ``MaxSessionDuration`` below ``max_ttl`` (STS would refuse), a trust policy that does
        not allow ``sts:TagSession`` / ``sts:SetSourceIdentity`` (every mint would be refused),
        or names no OIDC provider of the broker's issuer."""
        options = target.options
        role = role_name_of(options["role_arn"])
        try:
            answer = self.iam_client(options["region"]).get_role(RoleName=role)
        except Exception:  # noqa: BLE001 - a backend the broker cannot ask says nothing
            return []
        found = answer.get("Role") or {}
        warnings: list[str] = []
        longest = int(found.get("MaxSessionDuration") or 3600)
        if longest < target.max_ttl:
            warnings.append(f"aws target {target.name!r}: role {role} has MaxSessionDuration "
                            f"{longest}s, below the target's max_ttl {target.max_ttl}s: STS refuses "
                            f"longer sessions")
        trust = found.get("AssumeRolePolicyDocument")
        try:
            trust_text = compact_json(denylist.parse_document(trust))
        except (ValueError, TypeError):
            trust_text = ""
        for action in ("sts:AssumeRoleWithWebIdentity", "sts:TagSession", "sts:SetSourceIdentity"):
            if action not in trust_text and "sts:*" not in trust_text:
                warnings.append(f"aws target {target.name!r}: the trust policy of role {role} does "
                                f"not allow {action}: STS refuses every mint (docs/cloud.md)")
        issuer_host = (self._issuer or "").split("://", 1)[-1]
        if issuer_host and issuer_host not in trust_text:
            warnings.append(f"aws target {target.name!r}: the trust policy of role {role} names no "
                            f"OIDC provider for the broker's issuer {self._issuer}")
        return warnings


def session_policy(target: Target, scopes: tuple[str, ...]) -> str | None:
    """The inline session policy: the target's statements, then those of each granted scope
    (``scope_policies``), as one compact document; None when there are none."""
    documents = []
    if target.options.get("session_policy"):
        documents.append(target.options["session_policy"])
    scoped = target.options.get("scope_session_policies") or {}
    documents.extend(scoped[scope] for scope in scopes if scope in scoped)
    if not documents:
        return None
    if len(documents) == 1:
        text = compact_json(documents[0])
    else:
        statements: list[Any] = []
        for document in documents:
            found = document.get("Statement")
            statements.extend(found if isinstance(found, list) else [found])
        text = compact_json({"Version": "2012-10-17", "Statement": statements})
    if len(text) > MAX_SESSION_POLICY:
        raise errors.BackendMisconfigured(
            "target is not usable",
            detail=f"aws target {target.name!r}: the session policy of scopes {' '.join(scopes)} "
                   f"is {len(text)} characters; STS takes at most {MAX_SESSION_POLICY}",
            reason="aws_session_policy_too_large")
    return text
