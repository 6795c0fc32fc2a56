"""Vault / OpenBao through hvac: one authenticated client per Vault identity, errors mapped to
refusals a client may see.

Where the settings come from:

* a target's ``vault:`` block (``type: vault-database``, or ``admin_dsn_vault`` of a
  ``postgres`` target)::

      vault:
        addr_env: VAULT_ADDR              # or addr: https://vault.internal:8200
        auth: {method: approle, role_id_env: NHB_ROLE_ID, secret_id_file: /run/secrets/nhb-secret-id}
        # or token_env: NHB_VAULT_TOKEN / token_file: /run/secrets/vault-token
        # or auth: {method: kubernetes, role: nhi-broker}      (jwt_file: the service-account token)
        # or auth: {method: jwt, role: nhi-broker, jwt_file: /run/secrets/broker-oidc-token}
        namespace: team-a                 # optional; ca_cert: /path/ca.pem; timeout: 5

* or the broker's own environment (the Transit signer, and targets without a ``vault:``
  block): ``BROKER_VAULT_ADDR`` with ``BROKER_VAULT_TOKEN`` or ``BROKER_VAULT_TOKEN_FILE``, or
  ``BROKER_VAULT_AUTH_METHOD=approle`` with ``BROKER_VAULT_ROLE_ID`` and
  ``BROKER_VAULT_SECRET_ID_FILE``, or ``BROKER_VAULT_AUTH_METHOD=kubernetes|jwt`` with
  ``BROKER_VAULT_AUTH_ROLE`` and ``BROKER_VAULT_JWT_FILE``; ``BROKER_VAULT_AUTH_MOUNT``,
  ``BROKER_VAULT_NAMESPACE``, ``BROKER_VAULT_CACERT``, ``BROKER_VAULT_TIMEOUT`` (seconds).

A policy file names where a secret is (an environment variable, a file), never the secret.

**The broker's Vault token must outlive every lease it reads**: Vault revokes a token's leases
when the token expires or is revoked. :meth:`VaultClient.call` is told how long the lease it is
about to read must live (``need_ttl``); when the token has less left it renews the token
(``auth/token/renew-self``) and, if that is not enough, logs in again (a fresh token). A token
that cannot live that long is refused (``invalid_target``: the Vault role's ``token_max_ttl``
is shorter than the credential lifetime). Tokens without expiry (a root token in dev, a
periodic token while renewed) always qualify. A renewable token is also renewed in the
background at half its TTL, so an idle broker keeps its token. Use a periodic token
(AppRole ``token_period``) in production: it can be renewed indefinitely.

Errors: a sealed or unreachable Vault, a timeout, Vault's own 5xx or rate limiting become
``temporarily_unavailable`` (503); permission denied, an unknown role or path, a rejected
login become ``invalid_target`` (the target is misconfigured; retrying will not help). The
detail for the log and the ledger is Vault's first error line with the URL removed and any
known secret (the token, a secret id, a login JWT) replaced by ``***``.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from broker import errors

log = logging.getLogger("broker.vault.client")

T = TypeVar("T")

AUTH_METHODS = ("token", "approle", "kubernetes", "jwt")
DEFAULT_TIMEOUT = 5.0
DEFAULT_K8S_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: A lease must end at least this long before the token that read it.
TOKEN_MARGIN = 60
VAULT_BLOCK_KEYS = frozenset({"addr", "addr_env", "token_env", "token_file", "auth", "namespace",
                              "ca_cert", "timeout"})
AUTH_KEYS: dict[str, frozenset[str]] = {
    "token": frozenset({"method", "token_env", "token_file"}),
    "approle": frozenset({"method", "mount", "role_id", "role_id_env", "role_id_file",
                          "secret_id_env", "secret_id_file"}),
    "kubernetes": frozenset({"method", "mount", "role", "jwt_file"}),
    "jwt": frozenset({"method", "mount", "role", "jwt_file", "jwt_env"}),
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


class VaultUnavailable(errors.BackendUnavailable):
    """Vault is sealed, unreachable, too slow or failing (503): retry later."""


class VaultRefused(errors.BackendMisconfigured):
    """Vault refused the broker (permission denied, unknown role or path, rejected login):
    the target's Vault configuration is wrong."""


class VaultNotFound(VaultRefused):
    """Vault answered 404 or 'invalid lease' / 'unknown role' for what was asked."""


# ---------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class VaultSettings:
    """Where Vault is and how to log in. Holds names of secrets (environment variables,
    files); only a token given directly through the broker's own environment is a value, and
    it is kept out of ``repr``."""
    source: str                           # for messages: "target 'x'" or "BROKER_VAULT_*"
    addr: str | None = None
    addr_env: str | None = None
    method: str = "token"
    token: str | None = field(default=None, repr=False)
    token_env: str | None = None
    token_file: str | None = None
    mount: str | None = None
    role: str | None = None               # kubernetes / jwt login role
    role_id: str | None = None
    role_id_env: str | None = None
    role_id_file: str | None = None
    secret_id_env: str | None = None
    secret_id_file: str | None = None
    jwt_file: str | None = None
    jwt_env: str | None = None
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def resolved_addr(self) -> str:
        addr = self.addr or (os.environ.get(self.addr_env, "").strip() if self.addr_env else "")
        if not addr:
            where = f"environment variable {self.addr_env}" if self.addr_env else "addr"
            raise VaultRefused("target is not usable",
                               detail=f"vault ({self.source}): {where} (the Vault address) is not set")
        return addr.rstrip("/")


def settings_from_block(block: Mapping[str, Any], *, source: str) -> VaultSettings:
    """Settings from a validated ``vault:`` block (see :func:`validate_vault_block`)."""
    auth = dict(block.get("auth") or {})
    method = auth.get("method") or "token"
    return VaultSettings(
        source=source, addr=block.get("addr"), addr_env=block.get("addr_env"), method=method,
        token_env=block.get("token_env") or auth.get("token_env"),
        token_file=block.get("token_file") or auth.get("token_file"),
        mount=auth.get("mount") or (method if method != "token" else None),
        role=auth.get("role"), role_id=auth.get("role_id"), role_id_env=auth.get("role_id_env"),
        role_id_file=auth.get("role_id_file"), secret_id_env=auth.get("secret_id_env"),
        secret_id_file=auth.get("secret_id_file"),
        jwt_file=auth.get("jwt_file") or (DEFAULT_K8S_JWT_FILE if method == "kubernetes" else None),
        jwt_env=auth.get("jwt_env"), namespace=block.get("namespace"),
        ca_cert=block.get("ca_cert"), timeout=float(block.get("timeout", DEFAULT_TIMEOUT)))


def settings_from_config(config: Mapping[str, Any]) -> VaultSettings | None:
    """The broker's own Vault (``BROKER_VAULT_*``); None when ``BROKER_VAULT_ADDR`` is unset."""
    def get(key: str) -> str | None:
        value = config.get(f"VAULT_{key}")
        return str(value).strip() if value not in (None, "") else None

    addr = get("ADDR")
    if addr is None:
        return None
    method = (get("AUTH_METHOD") or "").lower()
    if not method:
        method = "approle" if get("ROLE_ID") or get("ROLE_ID_FILE") else "token"
    if method not in AUTH_METHODS:
        raise ValueError(f"BROKER_VAULT_AUTH_METHOD must be one of {', '.join(AUTH_METHODS)}")
    return VaultSettings(
        source="BROKER_VAULT_*", addr=addr, method=method, token=get("TOKEN"),
        token_file=get("TOKEN_FILE"), mount=get("AUTH_MOUNT") or (method if method != "token" else None),
        role=get("AUTH_ROLE"), role_id=get("ROLE_ID"), role_id_file=get("ROLE_ID_FILE"),
        secret_id_file=get("SECRET_ID_FILE"),
        jwt_file=get("JWT_FILE") or (DEFAULT_K8S_JWT_FILE if method == "kubernetes" else None),
        namespace=get("NAMESPACE"), ca_cert=get("CACERT"),
        timeout=float(get("TIMEOUT") or DEFAULT_TIMEOUT))


def validate_vault_block(ctx: Any, key: str = "vault") -> Iterator[Any]:
    """Problems of a target's ``vault:`` block (``ctx`` is a policy TargetContext). Relative
    file paths are resolved against the policy file's folder."""
    block = ctx.options.get(key)
    if not isinstance(block, dict):
        yield ctx.problem(key, f"{key} must be a mapping (addr or addr_env, and auth or token_env)")
        return
    yield from _block_problems(ctx, key, block)
    auth = block.get("auth")
    has_token = "token_env" in block or "token_file" in block
    if "token_env" in block and "token_file" in block:
        yield ctx.problem(key, f"{key}: give token_env or token_file, not both")
    if auth is None:
        if not has_token:
            yield ctx.problem(key, f"{key}: one of auth, token_env or token_file is required")
        return
    if has_token:
        yield ctx.problem(key, f"{key}: give auth or token_env/token_file, not both")
    yield from _auth_problems(ctx, key, auth)


def _block_problems(ctx: Any, key: str, block: dict[str, Any]) -> Iterator[Any]:
    """The ``vault:`` block's own keys (everything but ``auth``)."""
    for name in block:
        if name not in VAULT_BLOCK_KEYS:
            yield ctx.problem(key, f"{key}: unknown key {name!r} "
                                   f"(allowed: {', '.join(sorted(VAULT_BLOCK_KEYS))})")
    if ("addr" in block) == ("addr_env" in block):
        yield ctx.problem(key, f"{key}: exactly one of addr or addr_env is required")
    if "addr" in block and (not isinstance(block["addr"], str)
                            or not re.match(r"https?://[^\s]+$", block["addr"])):
        yield ctx.problem(key, f"{key}.addr must be an http(s) URL")
    yield from _env_name_problems(ctx, key, key, block, ("addr_env", "token_env"))
    yield from _file_problems(ctx, key, key, block, ("token_file", "ca_cert"))
    if "namespace" in block and (not isinstance(block["namespace"], str) or not block["namespace"]):
        yield ctx.problem(key, f"{key}.namespace must be a non-empty string")
    if "timeout" in block:
        t = block["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 120:
            yield ctx.problem(key, f"{key}.timeout must be a number of seconds from 0 to 120")


def _auth_problems(ctx: Any, key: str, auth: Any) -> Iterator[Any]:
    """The ``vault.auth`` block: its method, the keys that method allows, their values."""
    if not isinstance(auth, dict):
        yield ctx.problem(key, f"{key}.auth must be a mapping with a method")
        return
    method = auth.get("method")
    if not isinstance(method, str) or method not in AUTH_KEYS:
        yield ctx.problem(key, f"{key}.auth.method must be one of {', '.join(AUTH_METHODS)}")
        return
    for name in auth:
        if name not in AUTH_KEYS[method]:
            yield ctx.problem(key, f"{key}.auth: unknown key {name!r} for method {method} "
                                   f"(allowed: {', '.join(sorted(AUTH_KEYS[method]))})")
    yield from _env_name_problems(ctx, key, f"{key}.auth", auth,
                                  ("role_id_env", "secret_id_env", "jwt_env", "token_env"))
    yield from _file_problems(ctx, key, f"{key}.auth", auth,
                              ("role_id_file", "secret_id_file", "jwt_file", "token_file"))
    if "mount" in auth and (not isinstance(auth["mount"], str) or not is_vault_path(auth["mount"])):
        yield ctx.problem(key, f"{key}.auth.mount must be a Vault mount path like 'approle'")
    yield from _auth_method_problems(ctx, key, method, auth)


def _auth_method_problems(ctx: Any, key: str, method: str, auth: dict[str, Any]) -> Iterator[Any]:
    """What each auth method needs (exactly one source of each secret)."""
    if method == "approle":
        if sum(k in auth for k in ("role_id", "role_id_env", "role_id_file")) != 1:
            yield ctx.problem(key, f"{key}.auth: approle needs exactly one of role_id, role_id_env, "
                                   "role_id_file")
        if sum(k in auth for k in ("secret_id_env", "secret_id_file")) != 1:
            yield ctx.problem(key, f"{key}.auth: approle needs exactly one of secret_id_file, "
                                   "secret_id_env")
    elif method in ("kubernetes", "jwt"):
        if not isinstance(auth.get("role"), str) or not auth.get("role"):
            yield ctx.problem(key, f"{key}.auth: {method} needs role")
        if method == "jwt" and sum(k in auth for k in ("jwt_file", "jwt_env")) != 1:
            yield ctx.problem(key, f"{key}.auth: jwt needs exactly one of jwt_file, jwt_env")
    elif method == "token" and sum(k in auth for k in ("token_env", "token_file")) != 1:
        yield ctx.problem(key, f"{key}.auth: token needs exactly one of token_env, token_file")


def _env_name_problems(ctx: Any, key: str, where: str, block: dict[str, Any],
                       names: tuple[str, ...]) -> Iterator[Any]:
    for name in names:
        if name in block and (not isinstance(block[name], str) or not _ENV_NAME.fullmatch(block[name])):
            yield ctx.problem(key, f"{where}.{name} must be an environment variable name")


def _file_problems(ctx: Any, key: str, where: str, block: dict[str, Any],
                   names: tuple[str, ...]) -> Iterator[Any]:
    """Problems of file-path keys; a good one is resolved in place against the policy folder."""
    for name in names:
        if name in block:
            if not isinstance(block[name], str) or not block[name]:
                yield ctx.problem(key, f"{where}.{name} must be a file path")
            else:
                block[name] = str((ctx.base_dir / block[name]).resolve())


def is_vault_path(value: str) -> bool:
    """``a``, ``a/b``: segments of letters, digits, ``_ . -``; no leading or trailing slash."""
    return bool(value) and all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in value.split("/"))


# ---------------------------------------------------------------------------- errors

_URL_SUFFIX = re.compile(r",? on (get|put|post|delete|list|head) https?://\S+", re.IGNORECASE)


def _summary(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """Vault's first error line (no URL, no secret), or the exception's class name."""
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed"
    text = " ".join(str(exc).replace("* ", " ").split())
    text = _URL_SUFFIX.sub("", text)
    text = re.sub(r"^\d+ errors? occurred:\s*", "", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text[:200] or type(exc).__name__


def map_vault_error(exc: BaseException, *, action: str, source: str,
                    secrets: tuple[str, ...] = ()) -> errors.BrokerError:
    """The refusal for a Vault failure during ``action`` (never a token in it)."""
    import hvac.exceptions as hx
    import requests

    what = f"vault ({source}): {action} failed: {_summary(exc, secrets)}"
    if isinstance(exc, hx.VaultDown):
        return VaultUnavailable("the credential backend (Vault) is unavailable",
                                detail=f"vault ({source}): {action} failed: Vault is sealed")
    if isinstance(exc, (requests.exceptions.RequestException, hx.InternalServerError,
                        hx.BadGateway, hx.RateLimitExceeded, hx.VaultNotInitialized,
                        hx.UnexpectedError)):
        return VaultUnavailable("the credential backend (Vault) is unavailable", detail=what)
    if isinstance(exc, hx.InvalidPath):
        return VaultNotFound("target is not usable", detail=what)
    if isinstance(exc, hx.InvalidRequest):
        text = str(exc).lower()
        if "unknown role" in text or "invalid lease" in text or "no handler" in text:
            return VaultNotFound("target is not usable", detail=what)
        return VaultRefused("target is not usable", detail=what)
    if isinstance(exc, (hx.Forbidden, hx.Unauthorized, hx.UnsupportedOperation,
                        hx.PreconditionFailed, hx.ParamValidationError)):
        return VaultRefused("target is not usable", detail=what)
    if isinstance(exc, hx.VaultError):
        return VaultUnavailable("the credential backend (Vault) is unavailable", detail=what)
    return VaultUnavailable("the credential backend (Vault) is unavailable",
                            detail=f"vault ({source}): {action} failed: {type(exc).__name__}")


# ---------------------------------------------------------------------------- the client

def _read_secret(*, env: str | None = None, path: str | None = None, what: str, source: str) -> str:
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise VaultRefused("target is not usable",
                               detail=f"vault ({source}): environment variable {env} ({what}) is not set")
        return value
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise VaultRefused("target is not usable",
                               detail=f"vault ({source}): cannot read {what} file {path}: "
                                      f"{type(exc).__name__}") from None
        if not value:
            raise VaultRefused("target is not usable",
                               detail=f"vault ({source}): {what} file {path} is empty")
        return value
    raise VaultRefused("target is not usable", detail=f"vault ({source}): no {what} configured")


class VaultClient:
    """One Vault identity of this process: an hvac client, logged in on first use, its token
    renewed or replaced as needed. Thread-safe; hvac's session is shared by the threads."""

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._client: Any = None
        self._token_expires_at: float | None = None     # None: no expiry
        self._token_ttl: int = 0
        self._renewable = False
        self._secrets: tuple[str, ...] = ()
        self._keeper: threading.Thread | None = None
        self._closed = threading.Event()

    # -- login ---------------------------------------------------------------------------
    def _new_client(self) -> Any:
        import hvac

        s = self.settings
        verify: Any = s.ca_cert if s.ca_cert else True
        # the stub says int; hvac hands the timeout to requests, which takes seconds as a float
        return hvac.Client(url=s.resolved_addr(), namespace=s.namespace, verify=verify,
                           timeout=s.timeout)  # type: ignore[arg-type]

    def _login(self) -> None:
        """Make a client and a token (caller holds the lock)."""
        s = self.settings
        client = self._new_client()
        action = f"{s.method} login"
        try:
            if s.method == "token":
                token = s.token or _read_secret(env=s.token_env, path=s.token_file,
                                                what="Vault token", source=s.source)
                self._secrets = (token,)
                client.token = token
                info = client.auth.token.lookup_self()["data"]
                ttl, renewable = int(info.get("ttl") or 0), bool(info.get("renewable"))
            else:
                if s.method == "approle":
                    role_id = s.role_id or _read_secret(env=s.role_id_env, path=s.role_id_file,
                                                        what="AppRole role_id", source=s.source)
                    secret_id = _read_secret(env=s.secret_id_env, path=s.secret_id_file,
                                             what="AppRole secret_id", source=s.source)
                    self._secrets = (secret_id,)
                    response = client.auth.approle.login(role_id, secret_id,
                                                         mount_point=s.mount or "approle")
                else:
                    jwt = _read_secret(env=s.jwt_env, path=s.jwt_file, what="login JWT", source=s.source)
                    self._secrets = (jwt,)
                    if s.method == "kubernetes":
                        response = client.auth.kubernetes.login(s.role, jwt,
                                                                mount_point=s.mount or "kubernetes")
                    else:
                        response = client.auth.jwt.jwt_login(s.role, jwt, path=s.mount or "jwt")
                auth = response["auth"]
                self._secrets = (*self._secrets, auth["client_token"])
                ttl, renewable = int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
        except errors.BrokerError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, never repeated raw
            raise map_vault_error(exc, action=action, source=s.source, secrets=self._secrets) from None
        self._client = client
        self._set_ttl(ttl, renewable)
        log.info("vault (%s): logged in with %s (token ttl %s, renewable %s)", s.source, s.method,
                 ttl or "none", renewable)
        self._start_keeper()

    def _set_ttl(self, ttl: int, renewable: bool) -> None:
        self._token_ttl = ttl
        self._renewable = renewable
        self._token_expires_at = None if ttl <= 0 else time.time() + ttl

    def _renew(self) -> None:
        response = self._client.auth.token.renew_self()
        auth = response.get("auth") or {}
        self._set_ttl(int(auth.get("lease_duration") or 0), bool(auth.get("renewable")))

    def _ensure_token(self, need_ttl: int) -> None:
        """Make sure the token lives at least ``need_ttl`` + margin more seconds (lock held)."""
        if self._client is None:
            self._login()
        if self._token_expires_at is None:
            return
        wanted = need_ttl + TOKEN_MARGIN if need_ttl > 0 else 1
        if self._token_expires_at - time.time() >= max(wanted, self._token_ttl / 2):
            return
        if self._renewable:
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a fresh login may still work
                log.warning("vault (%s): token renewal failed: %s", self.settings.source,
                            _summary(exc, self._secrets))
        if self._token_expires_at is not None and self._token_expires_at - time.time() < wanted:
            if self.settings.method != "token":
                self._login()
        if self._token_expires_at is not None and self._token_expires_at - time.time() < wanted:
            raise VaultRefused(
                "target is not usable",
                detail=f"vault ({self.settings.source}): the broker's Vault token cannot live "
                       f"{wanted}s more; a lease it reads would be revoked early (use a periodic "
                       f"token or a longer token_max_ttl)")

    def _start_keeper(self) -> None:
        if not self._renewable or self._token_ttl <= 0:
            return
        if self._keeper is not None and self._keeper.is_alive():
            return
        self._keeper = threading.Thread(target=self._keep, name="nhb-vault-token", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        """Renew a renewable token at half its TTL while the process runs."""
        while True:
            with self._lock:
                if self._token_expires_at is None or not self._renewable:
                    return
                delay = max(5.0, (self._token_expires_at - time.time()) / 2)
            if self._closed.wait(delay):
                return
            with self._lock:
                try:
                    self._renew()
                except Exception as exc:  # noqa: BLE001 - next use logs in again if needed
                    log.warning("vault (%s): background token renewal failed: %s",
                                self.settings.source, _summary(exc, self._secrets))
                    return

    # -- calls -----------------------------------------------------------------------------
    def call(self, action: str, work: Callable[[Any], T], *, need_ttl: int = 0) -> T:
        """Run ``work(hvac_client)``; Vault failures become :class:`VaultUnavailable` /
        :class:`VaultRefused`. A permission error right after the token may have lapsed is
        retried once with a fresh login (not for a static token)."""
        for attempt in (1, 2):
            with self._lock:
                self._ensure_token(need_ttl)
                client = self._client
            try:
                return work(client)
            except errors.BrokerError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped below
                import hvac.exceptions as hx

                if (attempt == 1 and isinstance(exc, hx.Forbidden)
                        and (self.settings.method != "token" or self.settings.token_file)):
                    with self._lock:
                        if self._client is client:
                            self._client = None       # log in again (or re-read the token file)
                    continue
                raise map_vault_error(exc, action=action, source=self.settings.source,
                                      secrets=self._secrets) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.adapter.close()
            except Exception:  # noqa: BLE001 - best effort
                pass


_CLIENTS: dict[VaultSettings, VaultClient] = {}
_CLIENTS_LOCK = threading.Lock()


def vault_client(settings: VaultSettings) -> VaultClient:
    """The process's client for these settings (one login per Vault identity)."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(settings)
        if client is None:
            client = _CLIENTS[settings] = VaultClient(settings)
        return client


def close_clients() -> None:
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


def _forget_clients_after_fork() -> None:
    """A forked child (a gunicorn worker: the master built a context to check the
    configuration) must not share the parent's HTTP connections or token keeper: it starts
    with no clients and logs in itself."""
    global _CLIENTS_LOCK
    _CLIENTS_LOCK = threading.Lock()
    _CLIENTS.clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


# ---------------------------------------------------------------------------- KV

_KV_REF = re.compile(r"(?P<path>[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+)#(?P<field>[A-Za-z0-9_.-]+)")


def parse_kv_ref(ref: Any) -> tuple[str, str] | None:
    """``kv/data/payments#dsn`` → ``("kv/data/payments", "dsn")``; None when malformed."""
    if not isinstance(ref, str):
        return None
    match = _KV_REF.fullmatch(ref)
    if match is None or not is_vault_path(match["path"]):
        return None
    return match["path"], match["field"]


def read_kv_field(client: VaultClient, ref: str) -> str:
    """The string at ``<path>#<field>``. KV v2 (``<mount>/data/<name>``: the payload is under
    ``data.data``) and KV v1 (``data``) both work. Never logs or reports the value."""
    parsed = parse_kv_ref(ref)
    if parsed is None:
        raise VaultRefused("target is not usable", detail=f"vault: malformed KV reference {ref!r}")
    path, name = parsed
    response = client.call(f"read {path}", lambda c: c.read(path))
    if not response:
        raise VaultNotFound("target is not usable",
                            detail=f"vault ({client.settings.source}): {path} does not exist")
    data = response.get("data") or {}
    if isinstance(data.get("data"), dict) and isinstance(data.get("metadata"), dict):
        data = data["data"]                              # KV version 2
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise VaultNotFound("target is not usable",
                            detail=f"vault ({client.settings.source}): {path} has no string field {name!r}")
    return value


# ---------------------------------------------------------------------------- target secrets

def validate_kv_secret(ctx: Any, key: str) -> Iterator[Any]:
    """Problems of a ``<key>: <path>#<field>`` reference (e.g. ``admin_dsn_vault``) and of the
    target's optional ``vault:`` block that says which Vault to read it from."""
    if key in ctx.options and parse_kv_ref(ctx.options[key]) is None:
        yield ctx.problem(key, f"{key} must be a Vault KV reference like kv/data/payments#dsn")
    if "vault" in ctx.options:
        yield from validate_vault_block(ctx, "vault")


def read_target_secret(options: Mapping[str, Any], key: str, *, target: str) -> str:
    """The secret a target names with ``<key>: <path>#<field>``, read from the target's
    ``vault:`` block or, without one, the broker's ``BROKER_VAULT_*`` environment."""
    from broker.config import env_config

    block = options.get("vault")
    if block is not None:
        settings: VaultSettings | None = settings_from_block(block, source=f"target {target!r}")
    else:
        settings = settings_from_config(env_config())
    if settings is None:
        raise VaultRefused("target is not usable",
                           detail=f"target {target!r}: {key} needs a vault block or BROKER_VAULT_ADDR")
    return read_kv_field(vault_client(settings), str(options[key]))
