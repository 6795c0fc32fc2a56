"""Configuration of one gateway listener: the target's ``gateway:`` YAML block, parsed strictly.

``ListenerConfig.from_mapping(block)`` takes the block as loaded from the policy YAML (unknown
keys are errors, like every other policy object) and checks it once, at load: TLS files are
required unless ``listen`` is a loopback address.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Literal

LoginMode = Literal["minted-role", "service-role"]
AuditMode = Literal["required", "best-effort"]
ParametersMode = Literal["none", "hashed", "full"]
SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

_LOGIN = ("minted-role", "service-role")
_AUDIT = ("required", "best-effort")
_PARAMETERS = ("none", "hashed", "full")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class ConfigError(ValueError):
    """A gateway block that cannot be served as written."""


def _reject_unknown(where: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen: {text!r} is not host:port")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    host: str
    port: int = 5432
    dbname: str | None = None                  # None: the database the client asked for
    sslmode: SSLMode = "prefer"
    sslrootcert: str | None = None             # for verify-ca / verify-full
    connect_timeout: float = 10.0

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> UpstreamConfig:
        _reject_unknown("gateway.upstream", data,
                        {"host", "port", "dbname", "sslmode", "sslrootcert", "connect_timeout"})
        if not data.get("host"):
            raise ConfigError("gateway.upstream.host is required")
        sslmode = data.get("sslmode", "prefer")
        if sslmode not in _SSLMODES:
            raise ConfigError(f"gateway.upstream.sslmode must be one of {', '.join(_SSLMODES)}")
        if sslmode in ("verify-ca", "verify-full") and not data.get("sslrootcert"):
            raise ConfigError(f"gateway.upstream.sslmode {sslmode} needs sslrootcert")
        port = data.get("port", 5432)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError("gateway.upstream.port must be an integer from 1 to 65535")
        timeout = data.get("connect_timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError("gateway.upstream.connect_timeout must be a positive number")
        dbname = data.get("dbname")
        if dbname is not None and (not isinstance(dbname, str) or not dbname):
            raise ConfigError("gateway.upstream.dbname must be a non-empty string")
        return cls(host=str(data["host"]), port=port, dbname=dbname, sslmode=sslmode,
                   sslrootcert=data.get("sslrootcert"), connect_timeout=float(timeout))


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: str
    key_file: str

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TLSConfig:
        _reject_unknown("gateway.tls", data, {"cert_file", "key_file"})
        if not data.get("cert_file") or not data.get("key_file"):
            raise ConfigError("gateway.tls needs cert_file and key_file")
        return cls(cert_file=str(data["cert_file"]), key_file=str(data["key_file"]))


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One target's gateway: where it listens and how it reaches and records the database."""
    target: str
    listen: str
    upstream: UpstreamConfig
    login: LoginMode = "minted-role"
    tls: TLSConfig | None = None
    audit: AuditMode = "required"
    parameters: ParametersMode = "hashed"
    max_statement_bytes: int = 65536
    advertise: dict[str, Any] | None = None     # what clients are told; the gateway ignores it
    service_dsn_env: str | None = None          # read by the broker's Authenticator, not here
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return parse_address(self.listen)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address[0])

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, target: str = "",
                     check_files: bool = True) -> ListenerConfig:
        """``check_files`` False: judge the block as written (policy load on a host that is not
        a gateway) without looking for the TLS files, which :meth:`check` does at start."""
        if not isinstance(data, dict):
            raise ConfigError("gateway must be a mapping (listen, advertise, upstream, …)")
        _reject_unknown("gateway", data, {"listen", "advertise", "upstream", "login",
                                          "service_dsn_env", "tls", "audit", "parameters",
                                          "max_statement_bytes"})
        if not data.get("listen"):
            raise ConfigError("gateway.listen is required")
        if not isinstance(data.get("upstream"), dict):
            raise ConfigError("gateway.upstream is required")
        login = data.get("login", "minted-role")
        if login not in _LOGIN:
            raise ConfigError(f"gateway.login must be one of {', '.join(_LOGIN)}")
        if login == "service-role" and not data.get("service_dsn_env"):
            raise ConfigError("gateway.login service-role needs service_dsn_env")
        audit = data.get("audit", "required")
        if audit not in _AUDIT:
            raise ConfigError(f"gateway.audit must be one of {', '.join(_AUDIT)}")
        parameters = data.get("parameters", "hashed")
        if parameters not in _PARAMETERS:
            raise ConfigError(f"gateway.parameters must be one of {', '.join(_PARAMETERS)}")
        try:
            max_bytes = int(data.get("max_statement_bytes", 65536))
        except (TypeError, ValueError):
            raise ConfigError("gateway.max_statement_bytes must be an integer") from None
        if max_bytes < 64:
            raise ConfigError("gateway.max_statement_bytes must be at least 64")
        tls = TLSConfig.from_mapping(data["tls"]) if data.get("tls") else None
        config = cls(target=target, listen=str(data["listen"]),
                     upstream=UpstreamConfig.from_mapping(data["upstream"]), login=login, tls=tls,
                     audit=audit, parameters=parameters, max_statement_bytes=max_bytes,
                     advertise=_advertise(data.get("advertise")),
                     service_dsn_env=data.get("service_dsn_env"))
        config.check(files=check_files)
        return config

    def check(self, *, files: bool = True) -> None:
        """Refuse what must not be served: plaintext logins (the password is the access token) on
        anything but loopback, and TLS files that are not there."""
        self.address  # noqa: B018 - validates
        if self.tls is None and not self.loopback:
            raise ConfigError(f"gateway {self.target or self.listen}: tls (cert_file, key_file) is "
                              "required unless listen is a loopback address")
        if self.tls is not None and files:
            for path in (self.tls.cert_file, self.tls.key_file):
                if not os.path.isfile(path):
                    raise ConfigError(f"gateway {self.target or self.listen}: {path} does not exist")


def _advertise(value: Any) -> dict[str, Any] | None:
    """``advertise: {host, port}``: what clients are told (default: the listen address)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("gateway.advertise must be a mapping {host, port}")
    _reject_unknown("gateway.advertise", value, {"host", "port"})
    host, port = value.get("host"), value.get("port")
    if not isinstance(host, str) or not host:
        raise ConfigError("gateway.advertise.host must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("gateway.advertise.port must be an integer from 1 to 65535")
    return {"host": host, "port": port}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Process-wide settings: the listeners, worker processes, where spools live."""
    listeners: tuple[ListenerConfig, ...]
    spool_dir: str
    workers: int = 1
    health: str | None = None                   # host:port of the health check (HTTP GET /healthz)
    drain_batch: int = 5000
    drain_interval: float = 0.05
    drain_priority: Literal["low", "idle"] = "low"   # idle: SCHED_IDLE until the backlog is large
    spool_segment_bytes: int = 64 * 1024 * 1024
    shutdown_grace: float = 30.0
