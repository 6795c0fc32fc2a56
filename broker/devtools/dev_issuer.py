"""INSECURE, DEV-ONLY OpenID Connect issuer for the demo and the test suite.

:class:`DevIssuer` plays the part of GitHub Actions (or GitLab CI, or a Kubernetes cluster): it
holds a freshly generated signing key, serves a real OIDC discovery document and JWKS over HTTP
on 127.0.0.1, answers a GitHub-Actions-style ID-token request, and mints tokens with whatever
claims and headers a test asks for -- including deliberately broken ones (``alg: none``, HMAC
with the public key, foreign keys, forged headers). It exists so the broker's verifier can be
exercised end to end with no patched verifier and no network access.

It is never a trust anchor. It refuses to start unless ``BROKER_INSECURE_DEV_ISSUER=1`` is set
listens on loopback only, and its keys live only in memory.

Run it for the demo::

    BROKER_INSECURE_DEV_ISSUER=1 python -m broker.devtools.dev_issuer --port 8765
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

ENV_FLAG = "BROKER_INSECURE_DEV_ISSUER"
DEFAULT_AUDIENCE = "nhi-broker"

_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _dev_issuer_allowed() -> bool:
    """Only an explicit ``BROKER_INSECURE_DEV_ISSUER=1`` (the demo and the test suite set it);
    being imported by pytest or running under it is not permission."""
    return os.environ.get(ENV_FLAG) == "1"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: Any) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class DevKey:
    """An in-memory signing key of the dev issuer (or an attacker's key in a test)."""
    kid: str
    alg: str
    private_key: Any

    @classmethod
    def generate(cls, alg: str = "RS256", *, kid: str | None = None) -> DevKey:
        if alg.startswith(("RS", "PS")):
            private_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private_key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            private_key = ec.generate_private_key(ec.SECP384R1())
        elif alg == "ES512":
            private_key = ec.generate_private_key(ec.SECP521R1())
        elif alg == "EdDSA":
            private_key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"DevKey cannot generate a key for {alg}")
        return cls(kid=kid or f"dev-{secrets.token_hex(8)}", alg=alg, private_key=private_key)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk = algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def public_pem(self) -> bytes:
        pem: bytes = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # tests stay readable
        pass


class DevIssuer:
    """INSECURE, DEV-ONLY OIDC issuer over real HTTP on 127.0.0.1. Never use outside tests/demo.

    Attributes tests read or set:
    - ``request_token``: the bearer the ``/token`` endpoint requires (like GitHub's
      ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``).
    - ``jwks_requests``: how many discovery + JWKS requests were served (to check caching);
      ``request_counts`` counts them per path.
    - ``token_claims``: overrides applied to :meth:`github_claims` by the ``/token`` endpoint.
    - ``discovery_overrides``: members merged into the discovery document.
    - ``jwks_override``: when not None, served instead of the real JWKS (bytes as-is, else JSON).
    """

    def __init__(self, *, port: int = 0, algorithm: str = "RS256",
                 request_token: str | None = None) -> None:
        if not _dev_issuer_allowed():
            raise RuntimeError(
                "DevIssuer is an insecure, dev-only OIDC issuer: it runs only "
                f"when {ENV_FLAG}=1 is set (the demo sets it). Never use it in production."
            )
        self._port = port
        self._lock = threading.Lock()
        self._keys: list[DevKey] = [DevKey.generate(algorithm)]
        self.request_token = request_token or secrets.token_urlsafe(24)
        self.jwks_requests = 0
        self.request_counts: Counter[str] = Counter()
        self.token_claims: dict[str, Any] = {}
        self.discovery_overrides: dict[str, Any] = {}
        self.jwks_override: Any = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> DevIssuer:
        if self._server is not None:
            return self
        self._server = make_server("127.0.0.1", self._port, self._wsgi, threaded=True,
                                   request_handler=_QuietHandler)
        self._port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"dev-issuer-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DevIssuer is not started")
        return self._port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/.well-known/jwks"

    @property
    def token_url(self) -> str:
        """Like GitHub's ``ACTIONS_ID_TOKEN_REQUEST_URL``: append ``&audience=...``."""
        return f"{self.issuer}/token?api-version=2.0"

    # -- keys ------------------------------------------------------------------------------
    @property
    def key(self) -> DevKey:
        """The current signing key."""
        with self._lock:
            return self._keys[-1]

    @property
    def kid(self) -> str:
        return self.key.kid

    @property
    def keys(self) -> list[DevKey]:
        with self._lock:
            return list(self._keys)

    def rotate(self, *, drop_old: bool = False, algorithm: str | None = None) -> DevKey:
        """Start signing with a new key; the old ones stay published unless ``drop_old``."""
        new = DevKey.generate(algorithm or self.key.alg)
        with self._lock:
            self._keys = [new] if drop_old else [*self._keys, new]
        return new

    def add_key(self, key: DevKey) -> DevKey:
        """Publish ``key`` and sign with it from now on (e.g. a deliberately weak key)."""
        with self._lock:
            self._keys = [*self._keys, key]
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def discovery(self) -> dict[str, Any]:
        doc = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref",
                                 "repository", "repository_owner", "run_id", "run_attempt",
                                 "actor", "workflow_ref", "job_workflow_ref", "environment"],
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            "scopes_supported": ["openid"],
        }
        doc.update(self.discovery_overrides)
        return doc

    # -- minting ---------------------------------------------------------------------------
    def mint(self, claims: dict[str, Any] | None = None, *, audience: str | list[str] | None,
             ttl: int = 300, headers: dict[str, Any] | None = None, key: Any = None,
             alg: str | None = None, omit: tuple[str, ...] = (), now: float | None = None) -> str:
        """Sign a token. Registered claims (iss, aud, iat, nbf, exp, jti) are filled in unless
        ``claims`` overrides them or ``omit`` drops them. A header value of None drops it.

        ``key`` may be a :class:`DevKey` (its kid is used), a cryptography private key, or --
        for forging HMAC tokens in tests -- ``bytes``/``str`` used as the HMAC secret. ``alg``
        defaults to the key's algorithm; ``"none"`` produces an unsigned token.
        """
        issued = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "iss": self.issuer, "aud": audience, "iat": issued, "nbf": issued,
            "exp": issued + ttl, "jti": secrets.token_hex(16),
        }
        payload.update(claims or {})
        for name in omit:
            payload.pop(name, None)

        signer = self.key if key is None else key
        kid = signer.kid if isinstance(signer, DevKey) else self.key.kid
        if alg is None:
            alg = signer.alg if isinstance(signer, DevKey) else self.key.alg
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}

        return self._sign(header, payload, signer, alg)

    @staticmethod
    def _sign(header: dict[str, Any], payload: dict[str, Any], signer: Any, alg: str) -> str:
        """Serialize and sign by hand: PyJWT's encoder refuses the malformed tokens tests need
        (a non-string ``iss`` or ``kid``, ``alg: none``, HMAC keyed with a public key)."""
        signing_input = f"{_json_segment(header)}.{_json_segment(payload)}".encode("ascii")
        if alg.lower() == "none":
            return signing_input.decode("ascii") + "."
        if alg in _HMAC_HASHES:
            secret = signer.public_pem() if isinstance(signer, DevKey) else signer
            if isinstance(secret, str):
                secret = secret.encode("utf-8")
            signature = hmac.new(secret, signing_input, _HMAC_HASHES[alg]).digest()
        else:
            private_key = signer.private_key if isinstance(signer, DevKey) else signer
            algorithm = jwt.get_algorithm_by_name(alg)
            signature = algorithm.sign(signing_input, algorithm.prepare_key(private_key))
        return f"{signing_input.decode('ascii')}.{_b64url(signature)}"

    # -- realistic claim sets ----------------------------------------------------------------
    @staticmethod
    def github_claims(**overrides: Any) -> dict[str, Any]:
        """Claims shaped like a GitHub Actions ID token (overrides win; None removes a claim)."""
        sha = secrets.token_hex(20)
        run_id = str(secrets.randbelow(9 * 10**9) + 10**9)
        claims: dict[str, Any] = {
            "sub": "repo:acme/payments:environment:production",
            "environment": "production",
            "ref": "refs/heads/main",
            "sha": sha,
            "repository": "acme/payments",
            "repository_owner": "acme",
            "repository_owner_id": "1234567",
            "repository_id": "76543210",
            "repository_visibility": "private",
            "actor": "octocat",
            "actor_id": "583231",
            "workflow": "deploy",
            "workflow_ref": "acme/payments/.github/workflows/deploy.yml@refs/heads/main",
            "workflow_sha": sha,
            "job_workflow_ref": "acme/payments/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_sha": sha,
            "head_ref": "",
            "base_ref": "",
            "event_name": "push",
            "ref_type": "branch",
            "ref_protected": "true",
            "run_id": run_id,
            "run_number": "42",
            "run_attempt": "1",
            "runner_environment": "github-hosted",
        }
        return _apply_overrides(claims, overrides)

    @staticmethod
    def gitlab_claims(**overrides: Any) -> dict[str, Any]:
        """Claims shaped like a GitLab CI ``id_tokens`` token."""
        sha = secrets.token_hex(20)
        claims: dict[str, Any] = {
            "sub": "project_path:acme/payments:ref_type:branch:ref:main",
            "namespace_id": "72",
            "namespace_path": "acme",
            "project_id": "20",
            "project_path": "acme/payments",
            "project_visibility": "private",
            "user_id": "5",
            "user_login": "alice",
            "user_email": "alice@acme.example",
            "user_access_level": "developer",
            "pipeline_id": str(secrets.randbelow(9 * 10**8) + 10**8),
            "pipeline_source": "push",
            "job_id": str(secrets.randbelow(9 * 10**9) + 10**9),
            "ref": "main",
            "ref_type": "branch",
            "ref_path": "refs/heads/main",
            "ref_protected": "true",
            "environment": "production",
            "environment_protected": "true",
            "deployment_tier": "production",
            "runner_id": 1,
            "runner_environment": "gitlab-hosted",
            "sha": sha,
            "ci_config_ref_uri": "gitlab.com/acme/payments//.gitlab-ci.yml@refs/heads/main",
            "ci_config_sha": sha,
        }
        return _apply_overrides(claims, overrides)

    @staticmethod
    def kubernetes_claims(*, namespace: str = "payments", service_account: str = "deployer",
                          pod_name: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Claims shaped like a projected service-account token (nested under kubernetes.io)."""
        pod_name = pod_name or f"deployer-{secrets.token_hex(3)}"
        claims: dict[str, Any] = {
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": _uuid()},
                "pod": {"name": pod_name, "uid": _uuid()},
                "serviceaccount": {"name": service_account, "uid": _uuid()},
            },
        }
        return _apply_overrides(claims, overrides)

    def mint_github(self, *, audience: str = DEFAULT_AUDIENCE, ttl: int = 300,
                    **overrides: Any) -> str:
        return self.mint(self.github_claims(**overrides), audience=audience, ttl=ttl)

    # -- HTTP ------------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if request.method != "GET":
            return _json_response({"error": "method not allowed"}, 405)
        if path in ("/.well-known/openid-configuration", "/.well-known/jwks"):
            with self._lock:
                self.jwks_requests += 1
                self.request_counts[path] += 1
            if path.endswith("jwks"):
                if isinstance(self.jwks_override, (bytes, bytearray)):
                    return Response(bytes(self.jwks_override), content_type="application/json")
                body = self.jwks() if self.jwks_override is None else self.jwks_override
                return _json_response(body)
            return _json_response(self.discovery())
        if path == "/token":
            return self._token_endpoint(request)
        return _json_response({"error": "not found"}, 404)

    def _token_endpoint(self, request: Request) -> Response:
        with self._lock:
            self.request_counts["/token"] += 1
        presented = request.headers.get("Authorization", "")
        expected = f"Bearer {self.request_token}"
        if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
            return _json_response({"message": "Bad credentials"}, 401)
        claims = self.github_claims(**self.token_claims)
        audience = (request.args.get("audience")
                    or f"https://github.com/{claims.get('repository_owner', 'acme')}")
        return _json_response({"count": 2000, "value": self.mint(claims, audience=audience)})


def _apply_overrides(claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _uuid() -> str:
    import uuid
    return str(uuid.uuid4())


def _json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker.devtools.dev_issuer",
        description=f"INSECURE, DEV-ONLY OIDC issuer on 127.0.0.1 (needs {ENV_FLAG}=1).",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--algorithm", default="RS256", help="signing algorithm (RS256, ES256)")
    parser.add_argument("--request-token", default=None,
                        help="bearer the /token endpoint requires (random by default)")
    args = parser.parse_args(argv)
    try:
        dev = DevIssuer(port=args.port, algorithm=args.algorithm, request_token=args.request_token)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with dev:
        # First line: the issuer URL (the demo reads it). Then what a CI step would see.
        print(dev.issuer, flush=True)
        print(f"ACTIONS_ID_TOKEN_REQUEST_URL={dev.token_url}", flush=True)
        print(f"ACTIONS_ID_TOKEN_REQUEST_TOKEN={dev.request_token}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
