"""AWS for the tests: moto's real HTTP server (STS and IAM through boto3) and, in front of its
STS, :class:`StsGate` — a recording proxy that checks each ``AssumeRoleWithWebIdentity`` the way
AWS does and moto does not.

No AWS account is reachable here, and moto accepts any web-identity token for any role. So the
gate stands in for exactly that part of AWS, and says so: it looks up the IAM OIDC provider
registered (in moto) for the token's ``iss``, fetches the issuer's discovery document and JWKS
over HTTP, verifies the signature and the registered claims (``aud`` one of the provider's client
ids), checks the AWS claims (source identity, session tags) against AWS's limits, and evaluates
the role's trust policy (moto's own copy) for ``sts:AssumeRoleWithWebIdentity``,
``sts:TagSession`` and ``sts:SetSourceIdentity`` with ``StringEquals``/``StringLike`` conditions
on ``<provider>:aud``, ``<provider>:sub``, ``aws:RequestTag/<key>`` and ``aws:SourceIdentity``.
A refusal is answered with AWS's own error document; otherwise the request goes on to moto. Every
request is recorded (:attr:`StsGate.calls`), so tests read the exact token the broker sent.
"""
from __future__ import annotations

import contextlib
import fnmatch
import http.client
import http.server
import json
import secrets
import socketserver
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import jwt
import requests
from moto.server import ThreadedMotoServer

from tests.support.server import free_port

ACCOUNT = "123456789012"
REGION = "eu-west-1"
#: What IAM accepts as an OIDC provider's signing algorithm.
AWS_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"
TAGS_CLAIM = "https://aws.amazon.com/tags"
NAME = "[A-Za-z0-9_+=,.@-]"
#: The environment the broker's boto3 gets in the tests: moto's IAM, test credentials, no
#: config file, no instance metadata, one attempt (a refusal is not retried for seconds).
def aws_environment(moto_url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_IAM": moto_url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}


class Refused(Exception):
    """What AWS would answer instead of credentials."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


# ---------------------------------------------------------------------------- moto

class MotoAWS:
    """ThreadedMotoServer on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoAWS:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def register_broker(self, issuer: str, *, audiences: tuple[str, ...] = ("sts.amazonaws.com",)) -> str:
        """``aws iam create-open-id-connect-provider`` for the broker (docs/cloud.md)."""
        answer = self.client("iam").create_open_id_connect_provider(
            Url=issuer, ClientIDList=list(audiences), ThumbprintList=["0" * 40])
        return answer["OpenIDConnectProviderArn"]

    def create_role(self, name: str, trust: dict[str, Any], *, max_session: int = 3600) -> str:
        answer = self.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                                                MaxSessionDuration=max_session)
        return answer["Role"]["Arn"]

    def role_policy(self, role: str, name: str) -> dict[str, Any] | None:
        try:
            return self.client("iam").get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        except self.client("iam").exceptions.NoSuchEntityException:
            return None


def trust_policy(provider_arn: str, issuer: str, *, sub: str = "*",
                 tag_conditions: dict[str, str] | None = None) -> dict[str, Any]:
    """The role trust policy of docs/cloud.md."""
    host = issuer.split("://", 1)[-1]
    conditions: dict[str, Any] = {"StringEquals": {f"{host}:aud": "sts.amazonaws.com"},
                                  "StringLike": {f"{host}:sub": sub}}
    for key, value in (tag_conditions or {}).items():
        conditions["StringLike"][f"aws:RequestTag/{key}"] = value
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Federated": provider_arn},
        "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession", "sts:SetSourceIdentity"],
        "Condition": conditions}]}


# ---------------------------------------------------------------------------- AWS's checks

def verify_as_aws(token: str, *, provider_urls: dict[str, list[str]]) -> dict[str, Any]:
    """The claims of a web-identity token if AWS would accept it, else :class:`Refused`.
    ``provider_urls``: the IAM OIDC providers (URL without scheme → client ids)."""
    if len(token) > 20_000:
        raise Refused("ValidationError", "WebIdentityToken is longer than 20000 characters")
    try:
        header = jwt.get_unverified_header(token)
        unverified_claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Refused("InvalidIdentityToken", f"malformed token ({type(exc).__name__})") from None
    unverified_issuer = unverified_claims.get("iss")
    if not isinstance(unverified_issuer, str) or \
            unverified_issuer.split("://", 1)[-1] not in provider_urls:
        raise Refused("InvalidIdentityToken", "No OpenIDConnect provider found in your account for "
                                              f"{unverified_issuer}")
    if header.get("alg") not in AWS_ALGORITHMS or not isinstance(header.get("kid"), str):
        raise Refused("InvalidIdentityToken", f"unsupported signing algorithm {header.get('alg')!r}")
    try:
        discovery = requests.get(f"{unverified_issuer}/.well-known/openid-configuration", timeout=5).json()
        keys = requests.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise Refused("IDPCommunicationError", f"cannot fetch the issuer's keys ({type(exc).__name__})") from None
    if discovery.get("issuer") != unverified_issuer:
        raise Refused("InvalidIdentityToken", "the discovery document names another issuer")
    jwk = next((k for k in keys if k.get("kid") == header["kid"]), None)
    if jwk is None:
        raise Refused("InvalidIdentityToken", "the token's kid is not in the issuer's JWKS")
    audiences = provider_urls[unverified_issuer.split("://", 1)[-1]]
    try:
        claims = jwt.decode(
            token, jwt.PyJWK(jwk).key, algorithms=[header["alg"]], audience=audiences,
            issuer=unverified_issuer, leeway=0,
            options={"require": ["iss", "sub", "aud", "exp", "iat"], "verify_signature": True,
                     "verify_exp": True, "verify_iat": True, "verify_nbf": True,
                     "verify_iss": True, "verify_aud": True, "strict_aud": False})
    except jwt.ExpiredSignatureError:
        raise Refused("ExpiredTokenException", "Token expired") from None
    except jwt.PyJWTError as exc:
        raise Refused("InvalidIdentityToken", f"the token does not verify ({type(exc).__name__})") from None
    check_aws_claims(claims)
    return claims


def check_aws_claims(claims: dict[str, Any]) -> None:
    """AWS's rules for the source identity and session tag claims (STS API reference)."""
    import re

    source = claims.get(SOURCE_IDENTITY_CLAIM)
    if source is not None and (not isinstance(source, str) or not re.fullmatch(f"{NAME}{{2,64}}", source)
                               or source.lower().startswith("aws:")):
        raise Refused("ValidationError", "invalid source identity")
    tags = claims.get(TAGS_CLAIM)
    if tags is None:
        return
    principal_tags = tags.get("principal_tags") if isinstance(tags, dict) else None
    if not isinstance(principal_tags, dict) or len(principal_tags) > 50:
        raise Refused("ValidationError", "principal_tags must be an object of at most 50 tags")
    lowered = [k.lower() for k in principal_tags]
    if len(set(lowered)) != len(lowered):
        raise Refused("InvalidParameterValue", "duplicate tag keys (case-insensitive)")
    for key, value in principal_tags.items():
        if not (1 <= len(key) <= 128) or not re.fullmatch(r"[\w .:/=+\-@]+", key) or key.lower().startswith("aws:"):
            raise Refused("ValidationError", f"invalid tag key {key!r}")
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str) \
                or len(value[0]) > 256 or not re.fullmatch(r"[\w .:/=+\-@]*", value[0]):
            raise Refused("ValidationError", f"invalid tag value of {key!r}")
    transitive = tags.get("transitive_tag_keys", [])
    if not isinstance(transitive, list) or not set(transitive) <= set(principal_tags):
        raise Refused("ValidationError", "transitive_tag_keys must name principal tags")


def trust_refusal(trust: dict[str, Any], *, provider_arn: str, host: str, claims: dict[str, Any]
                  ) -> str | None:
    """Why the role's trust policy does not let this token in (None: it does)."""
    tags = {k: v[0] for k, v in ((claims.get(TAGS_CLAIM) or {}).get("principal_tags") or {}).items()}
    context = {f"{host}:aud": claims.get("aud"), f"{host}:sub": claims.get("sub"),
               "aws:SourceIdentity": claims.get(SOURCE_IDENTITY_CLAIM),
               **{f"aws:RequestTag/{k}": v for k, v in tags.items()}}
    needed = ["sts:AssumeRoleWithWebIdentity"]
    if tags:
        needed.append("sts:TagSession")
    if claims.get(SOURCE_IDENTITY_CLAIM) is not None:
        needed.append("sts:SetSourceIdentity")
    statements = trust.get("Statement") or []
    statements = [statements] if isinstance(statements, dict) else statements
    for action in needed:
        if not any(_allows(s, action, provider_arn, context) for s in statements):
            return f"Not authorized to perform {action}"
    return None


def _allows(statement: dict[str, Any], action: str, provider_arn: str, context: dict[str, Any]) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    principal = (statement.get("Principal") or {}).get("Federated")
    if provider_arn not in ([principal] if isinstance(principal, str) else principal or []):
        return False
    actions = statement.get("Action") or []
    if not any(fnmatch.fnmatchcase(action, a) for a in ([actions] if isinstance(actions, str) else actions)):
        return False
    for operator, tests in (statement.get("Condition") or {}).items():
        if operator not in ("StringEquals", "StringLike"):
            return False                # an operator this stand-in cannot judge: fail closed
        for key, expected in tests.items():
            value = context.get(key)
            options = [expected] if isinstance(expected, str) else expected
            if not isinstance(value, str) or not any(
                    value == o if operator == "StringEquals" else fnmatch.fnmatchcase(value, o)
                    for o in options):
                return False
    return True


# ---------------------------------------------------------------------------- the gate

@dataclass
class StsCall:
    """One request the broker made to STS, as received."""
    form: dict[str, str]
    claims: dict[str, Any] | None = None      # the verified token's claims (None: refused)
    refused: str | None = None                # the AWS error code answered

    @property
    def token(self) -> str:
        return self.form["WebIdentityToken"]


@dataclass
class StsGate:
    moto: MotoAWS
    calls: list[StsCall] = field(default_factory=list)
    #: answer every call with this AWS error instead: (code, message, HTTP status)
    failing: tuple[str, str, int] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def providers(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        iam = self.moto.client("iam")
        urls: dict[str, list[str]] = {}
        arns: dict[str, str] = {}
        for entry in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            found = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=entry["Arn"])
            urls[found["Url"]] = list(found["ClientIDList"])
            arns[found["Url"]] = entry["Arn"]
        return urls, arns

    def judge(self, form: dict[str, str]) -> StsCall:
        call = StsCall(form=form)
        try:
            if self.failing is not None:
                raise Refused(*self.failing)
            urls, arns = self.providers()
            claims = verify_as_aws(form.get("WebIdentityToken", ""), provider_urls=urls)
            host = claims["iss"].split("://", 1)[-1]
            role = form.get("RoleArn", "").rsplit("/", 1)[-1]
            try:
                found = self.moto.client("iam").get_role(RoleName=role)["Role"]
            except Exception:  # noqa: BLE001 - no such role: AWS says not authorized
                raise Refused("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403) from None
            trust = found["AssumeRolePolicyDocument"]
            trust = json.loads(urllib.parse.unquote(trust)) if isinstance(trust, str) else trust
            reason = trust_refusal(trust, provider_arn=arns[host], host=host, claims=claims)
            if reason is not None:
                raise Refused("AccessDenied", reason, 403)
            duration = int(form.get("DurationSeconds", "3600"))
            if duration > int(found.get("MaxSessionDuration") or 3600):
                raise Refused("ValidationError", "The requested DurationSeconds exceeds the "
                                                 "MaxSessionDuration set for this role.")
            call.claims = claims
        except Refused as refusal:
            call.refused = refusal.code
            call.error = refusal            # type: ignore[attr-defined]
        self.calls.append(call)
        return call


def _error_xml(refusal: Refused) -> bytes:
    kind = "Receiver" if refusal.status >= 500 else "Sender"
    return (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>{kind}</Type>'
            f"<Code>{refusal.code}</Code><Message>{refusal.message}</Message></Error>"
            f"<RequestId>{secrets.token_hex(16)}</RequestId></ErrorResponse>").encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    gate: StsGate

    def log_message(self, *args: Any) -> None:
        return None

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if form.get("Action") == "AssumeRoleWithWebIdentity":
            call = self.gate.judge(form)
            if call.refused is not None:
                payload = _error_xml(call.error)  # type: ignore[attr-defined]
                self.send_response(call.error.status)  # type: ignore[attr-defined]
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
        upstream = http.client.HTTPConnection("127.0.0.1", self.gate.moto.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        upstream.request("POST", self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        payload = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        upstream.close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def sts_gate(moto: MotoAWS) -> Iterator[StsGate]:
    gate = StsGate(moto)
    handler = type("GateHandler", (_Handler,), {"gate": gate})
    server = _Server(("127.0.0.1", 0), handler)
    gate.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="sts-gate")
    thread.start()
    try:
        yield gate
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- a served broker

@contextlib.contextmanager
def served(app_for_issuer: Any) -> Iterator[tuple[str, Any]]:
    """``app_for_issuer(issuer_url)`` served over real HTTP in this process (AWS fetches the
    broker's discovery document and JWKS from its issuer URL); yields ``(url, app)``."""
    from werkzeug.serving import make_server

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = app_for_issuer(url)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="broker-under-test")
    thread.start()
    try:
        yield url, app
    finally:
        server.shutdown()
        server.server_close()


def open_url(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())
