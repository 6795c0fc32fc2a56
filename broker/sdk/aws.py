"""A boto3 session on an AWS session the broker minted, that renews itself before it expires.

::

    from broker.sdk import Broker
    from broker.sdk.aws import AWSSession

    broker = Broker("https://broker.internal", subject_token=Broker.attestation_provider())
    with AWSSession(broker, "deploy-aws", scope="deploy:write") as aws:     # revoked on exit
        aws.client("s3").upload_file("app.tar", "deploy", "app.tar")
        aws.session.resource("dynamodb")                                  # the boto3.Session itself

The credentials are botocore ``RefreshableCredentials`` served by a credential provider put first
in the session's chain: when the session comes within ``renew_margin`` seconds of its expiry
(default a quarter of its lifetime, 60 s to 5 min) the next AWS call first exchanges a fresh
attestation for a new broker credential (:meth:`broker.sdk.Credential.renew`), so
``subject_token`` must be a callable (attestations are single use). Every credential it held is
revoked on exit — at AWS that is a deny statement on the role (docs/cloud.md).

boto3 is imported when an :class:`AWSSession` is made, never on import: :mod:`broker.sdk` stays
importable with the standard library alone (``pip install 'nhi-broker[aws]'`` brings boto3).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from broker.sdk import Broker, BrokerError, Credential

__all__ = ["AWSSession", "aws_session"]

METHOD = "nhi-broker"


def _imports() -> tuple[Any, Any, Any]:
    try:
        import boto3
        import botocore.credentials
        import botocore.session
    except ImportError:
        raise ImportError("AWSSession needs boto3: pip install 'nhi-broker[aws]'") from None
    return boto3, botocore.credentials, botocore.session


class AWSSession:
    """A renewing boto3 session for one ``type: aws`` target (see the module docstring)."""

    def __init__(self, broker: Broker, target: str, *, scope: str | Iterable[str] | None = None,
                 ttl: str | int | None = None, renew_margin: float | None = None,
                 region_name: str | None = None) -> None:
        boto3, credentials_module, session_module = _imports()
        if broker.subject_token is not None and not callable(broker.subject_token):
            raise ValueError("AWSSession renews with a fresh attestation each time: pass a callable "
                             "subject_token, e.g. Broker.attestation_provider()")
        self.credential: Credential = broker.credential(target, scope=scope, ttl=ttl)
        secret = self._secret()
        lifetime = max(1.0, self.credential.expires_in)
        margin = float(renew_margin) if renew_margin is not None else max(60.0, min(300.0, lifetime / 4))
        refreshable = credentials_module.RefreshableCredentials.create_from_metadata(
            metadata=self._metadata(secret), refresh_using=self._renewed, method=METHOD,
            advisory_timeout=margin, mandatory_timeout=margin / 2)

        class BrokerProvider(credentials_module.CredentialProvider):  # type: ignore[misc,name-defined]
            METHOD = METHOD
            CANONICAL_NAME = "nhi-broker"

            def load(self) -> Any:
                return refreshable

        core = session_module.Session()
        core.get_component("credential_provider").insert_before("env", BrokerProvider())
        self.session: Any = boto3.session.Session(   # a boto3.session.Session
            botocore_session=core, region_name=region_name or secret.get("region"))

    # -- the credentials ---------------------------------------------------------------------
    def _secret(self) -> dict[str, Any]:
        secret = self.credential.secret or {}
        if secret.get("type") != "aws":
            raise BrokerError("invalid_target", f"the credential for {self.credential.target!r} is not "
                                                f"an AWS session (a target of type aws, mode assume)")
        return secret

    @staticmethod
    def _metadata(secret: dict[str, Any]) -> dict[str, Any]:
        expiry = datetime.strptime(secret["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return {"access_key": secret["access_key_id"], "secret_key": secret["secret_access_key"],
                "token": secret["session_token"], "expiry_time": expiry.isoformat()}

    def _renewed(self) -> dict[str, Any]:
        self.credential.renew()
        return self._metadata(self._secret())

    @property
    def credential_id(self) -> str:
        """The credential id of the session in use (its source identity and session name)."""
        return self.credential.credential_id

    # -- using it ----------------------------------------------------------------------------
    def client(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.client(*args, **kwargs)

    def resource(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.resource(*args, **kwargs)

    # -- ending it ---------------------------------------------------------------------------
    def revoke(self) -> None:
        """Revoke every credential this session held (idempotent)."""
        self.credential.revoke()

    close = revoke

    def __enter__(self) -> AWSSession:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.credential.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"AWSSession({self.credential!r})"


def aws_session(broker: Broker, target: str, **options: Any) -> AWSSession:
    """:class:`AWSSession` (``scope``, ``ttl``, ``renew_margin``, ``region_name``)."""
    return AWSSession(broker, target, **options)
