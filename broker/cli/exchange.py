"""`broker exchange`: the CI step — find the job's attestation, exchange it, hand the credential on.

    broker exchange --target payments-db [--scope read] [--ttl 10m] [--broker URL] [--audience A]
                    [--format env|dotenv|json] [--subject-token-file PATH]
                    [--gitlab-token-var NAME] [--k8s-token-file PATH]

The attestation comes from (first match): ``--subject-token-file``; GitHub Actions (an ID token
requested from ``ACTIONS_ID_TOKEN_REQUEST_URL`` for the broker's audience — the job needs
``permissions: id-token: write``); GitLab CI (the ``id_tokens`` variable, ``BROKER_ID_TOKEN`` by
default); a Kubernetes projected token file. See :func:`broker.sdk.detect_attestation`.

Variables: ``BROKER_ACCESS_TOKEN``, ``BROKER_CREDENTIAL_ID``, ``BROKER_TARGET``, ``BROKER_SCOPE``,
``BROKER_EXPIRES_AT`` (epoch seconds), ``BROKER_PARENT_ID`` (children only); for a database
credential also ``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, ``PGSSLMODE``
(when set) and ``BROKER_DSN``; any other field of the credential as ``BROKER_CREDENTIAL_<FIELD>``.

Output: ``--format env`` (default outside GitHub Actions) prints shell ``export`` lines, quoted
for ``eval "$(broker exchange …)"``; ``dotenv`` prints ``NAME=value`` lines; ``json`` prints one
JSON object. In GitHub Actions (``GITHUB_ACTIONS=true``) the command first prints
``::add-mask::`` for every secret (token, password, DSN), then appends every variable to
``$GITHUB_ENV`` and the non-secret ones (``credential-id``, ``target``, ``scope``,
``expires-at``) to ``$GITHUB_OUTPUT`` with the multi-line-safe ``NAME<<DELIMITER`` syntax; it
prints a format only when ``--format`` is given.

Errors are one line on stderr — the broker's ``error`` and ``error_description`` — and the exit
status says what failed: 1 the broker refused, 2 usage or no attestation, 3 the broker (or the
token endpoint) could not be reached.

When the target needs a person's approval (docs/approvals.md) the command prints the
``approval_url`` on stderr and polls (``--approval-timeout``, default 600 s) with a fresh
attestation each time, honouring ``slow_down``; it prints the credential once approved.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import uuid
from typing import Any

import click

from broker.sdk import (
    DEFAULT_GITLAB_TOKEN_VAR, DEFAULT_K8S_TOKEN_FILE, AttestationUnavailable, Broker, BrokerError,
    BrokerUnreachable, Credential, detect_attestation,
)

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
_PG_FIELDS = (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"),
              ("username", "PGUSER"), ("user", "PGUSER"), ("password", "PGPASSWORD"),
              ("sslmode", "PGSSLMODE"))
_SECRET_WORDS = ("password", "secret", "token", "key", "dsn", "uri", "url")
_DOTENV_SAFE = re.compile(r"[A-Za-z0-9_./:@+,=-]*")


class Variable:
    """One output: ``name`` (environment), ``output`` (GitHub step output or None), value."""

    __slots__ = ("name", "value", "secret", "output")

    def __init__(self, name: str, value: str, *, secret: bool, output: str | None = None) -> None:
        self.name, self.value, self.secret, self.output = name, value, secret, output

    def __repr__(self) -> str:
        return f"Variable({self.name!r}, secret={self.secret})"


def credential_variables(cred: Credential) -> list[Variable]:
    """The variables a credential becomes (see the module docstring)."""
    variables = [
        Variable("BROKER_ACCESS_TOKEN", cred.access_token, secret=True),
        Variable("BROKER_CREDENTIAL_ID", cred.credential_id, secret=False, output="credential-id"),
        Variable("BROKER_TARGET", cred.target, secret=False, output="target"),
        Variable("BROKER_SCOPE", " ".join(cred.scope), secret=False, output="scope"),
        Variable("BROKER_EXPIRES_AT", str(int(cred.expires_at)), secret=False, output="expires-at"),
    ]
    if cred.parent_id:
        variables.append(Variable("BROKER_PARENT_ID", cred.parent_id, secret=False, output="parent-id"))
    secret = cred.secret or {}
    used = {"type", "expires_at"}
    if "password" in secret:
        for field, name in _PG_FIELDS:
            if secret.get(field) is not None and not any(v.name == name for v in variables):
                variables.append(Variable(name, str(secret[field]), secret=(field == "password")))
                used.add(field)
        if secret.get("dsn"):
            variables.append(Variable("BROKER_DSN", str(secret["dsn"]), secret=True))
            used.add("dsn")
    for field, value in secret.items():
        if field in used or value is None or isinstance(value, (dict, list)):
            continue
        name = "BROKER_CREDENTIAL_" + re.sub(r"[^A-Za-z0-9]", "_", field).upper()
        variables.append(Variable(name, str(value),
                                  secret=any(w in field.lower() for w in _SECRET_WORDS)))
    return variables


# -- rendering -------------------------------------------------------------------------------

def render_env(variables: list[Variable]) -> str:
    return "".join(f"export {v.name}={shlex.quote(v.value)}\n" for v in variables)


def render_dotenv(variables: list[Variable]) -> str:
    lines = []
    for v in variables:
        if _DOTENV_SAFE.fullmatch(v.value):
            lines.append(f"{v.name}={v.value}\n")
        else:
            escaped = (v.value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
                       .replace("\n", "\\n"))
            lines.append(f'{v.name}="{escaped}"\n')
    return "".join(lines)


def render_json(cred: Credential) -> str:
    body: dict[str, Any] = {
        "credential_id": cred.credential_id, "target": cred.target, "scope": " ".join(cred.scope),
        "expires_at": int(cred.expires_at), "parent_id": cred.parent_id,
        "access_token": cred.access_token,
    }
    if cred.secret is not None:
        body["credential"] = cred.secret
    return json.dumps(body, indent=2) + "\n"


def command_data(value: str) -> str:
    """Escape a value for a GitHub workflow command (``::add-mask::…``)."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def mask_commands(variables: list[Variable]) -> str:
    lines: list[str] = []
    for v in variables:
        if v.secret and v.value:
            lines.append(f"::add-mask::{command_data(v.value)}\n")
            lines.extend(f"::add-mask::{command_data(part)}\n"      # each line of a multi-line one
                         for part in v.value.splitlines() if part and part != v.value)
    return "".join(lines)


def github_file_entries(pairs: list[tuple[str, str]]) -> str:
    """``NAME<<DELIMITER`` blocks (GitHub's multi-line syntax), a fresh delimiter per value."""
    out = []
    for name, value in pairs:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        while delimiter in value or delimiter in name:      # practically never
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
        out.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(out)


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


# -- the command -----------------------------------------------------------------------------

class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _fail_line(message: str, *, github: bool) -> str:
    message = " ".join(message.split())
    return f"::error title=broker exchange::{command_data(message)}" if github \
        else f"broker exchange: error: {message}"


@click.command("exchange")
@click.option("--target", required=True, help="The target to mint a credential for (the RFC 8693 audience).")
@click.option("--scope", "scopes", multiple=True, help="Scope(s) to request; repeat or space-separate.")
@click.option("--ttl", default=None, help="Ask for a shorter lifetime than the policy allows (90s, 5m, 1h).")
@click.option("--broker", "broker_url", envvar="BROKER_URL", default=None,
              help="The broker's URL (default: $BROKER_URL).")
@click.option("--audience", envvar="BROKER_AUDIENCE", default=None,
              help="Audience of the requested attestation (default: $BROKER_AUDIENCE, else the broker URL).")
@click.option("--format", "fmt", type=click.Choice(["env", "dotenv", "json"]), default=None,
              help="What to print (default: env; in GitHub Actions nothing but masks and a summary).")
@click.option("--subject-token-file", type=click.Path(dir_okay=False), default=None,
              help="Read the attestation from this file instead of detecting it.")
@click.option("--gitlab-token-var", envvar="BROKER_GITLAB_TOKEN_VAR", default=DEFAULT_GITLAB_TOKEN_VAR,
              show_default=True, help="GitLab CI: the id_tokens variable holding the attestation.")
@click.option("--k8s-token-file", envvar="BROKER_K8S_TOKEN_FILE", default=DEFAULT_K8S_TOKEN_FILE,
              show_default=True, help="Kubernetes: the projected service-account token file.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per HTTP request.")
@click.option("--approval-timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for a person's approval, when the target needs one.")
def exchange(target: str, scopes: tuple[str, ...], ttl: str | None, broker_url: str | None,
             audience: str | None, fmt: str | None, subject_token_file: str | None,
             gitlab_token_var: str, k8s_token_file: str, timeout: float,
             approval_timeout: float) -> None:
    """Exchange this job's attestation for a credential (the CI step)."""
    github = os.environ.get("GITHUB_ACTIONS") == "true"
    try:
        cred = _exchange(target=target, scopes=scopes, ttl=ttl, broker_url=broker_url,
                         audience=audience, subject_token_file=subject_token_file,
                         gitlab_token_var=gitlab_token_var, k8s_token_file=k8s_token_file,
                         timeout=timeout, approval_timeout=approval_timeout)
        _emit(cred, fmt=fmt, github=github)
    except _Fail as exc:
        click.echo(_fail_line(exc.message, github=github), err=True)
        sys.exit(exc.code)


def _exchange(*, target: str, scopes: tuple[str, ...], ttl: str | None, broker_url: str | None,
              audience: str | None, subject_token_file: str | None, gitlab_token_var: str,
              k8s_token_file: str, timeout: float, approval_timeout: float = 600.0) -> Credential:
    if not broker_url:
        raise _Fail(EXIT_USAGE, "no broker URL: pass --broker or set BROKER_URL")
    try:
        announced: set[str] = set()

        def pending(body: dict[str, Any]) -> None:
            approval_id = str(body.get("approval_id"))
            if approval_id not in announced and body.get("approval_url"):
                announced.add(approval_id)
                click.echo(f"broker exchange: waiting for a person to approve: "
                           f"{body['approval_url']}", err=True)

        broker = Broker(broker_url, timeout=timeout, approval_timeout=approval_timeout,
                        on_approval_pending=pending)
    except ValueError as exc:
        raise _Fail(EXIT_USAGE, str(exc)) from None
    try:
        def detect() -> str:
            return detect_attestation(audience or broker.url, subject_token_file=subject_token_file,
                                      gitlab_token_var=gitlab_token_var,
                                      k8s_token_file=k8s_token_file, timeout=timeout).token

        # The first attestation is detected now (a missing one fails before any request); an
        # approval poll asks for a fresh one each time (GitHub Actions mints one per request).
        first = [detect()]

        def provide() -> str:
            return first.pop() if first else detect()

        broker.subject_token = provide
        scope = " ".join(s for part in scopes for s in part.split()) or None
        return broker.credential(target, scope=scope, ttl=ttl)
    except AttestationUnavailable as exc:
        raise _Fail(EXIT_USAGE, f"no attestation: {exc.description}") from None
    except BrokerUnreachable as exc:
        raise _Fail(EXIT_UNREACHABLE, str(exc.description)) from None
    except BrokerError as exc:
        raise _Fail(EXIT_REFUSED, str(exc)) from None


def _emit(cred: Credential, *, fmt: str | None, github: bool) -> None:
    variables = credential_variables(cred)
    out = sys.stdout
    if github:
        # Masks first, before any value can reach the log.
        out.write(mask_commands(variables))
        out.flush()
        env_file, output_file = os.environ.get("GITHUB_ENV"), os.environ.get("GITHUB_OUTPUT")
        try:
            if env_file:
                _append(env_file, github_file_entries([(v.name, v.value) for v in variables]))
            if output_file:
                _append(output_file, github_file_entries(
                    [(v.output, v.value) for v in variables if v.output and not v.secret]))
        except OSError as exc:
            raise _Fail(EXIT_USAGE, f"cannot write $GITHUB_ENV/$GITHUB_OUTPUT: "
                                    f"{exc.strerror or type(exc).__name__}") from None
        wrote = " and ".join(n for n, f in (("$GITHUB_ENV", env_file), ("$GITHUB_OUTPUT", output_file)) if f)
        click.echo(f"broker exchange: credential {cred.credential_id} for {cred.target} "
                   f"(scope: {' '.join(cred.scope) or 'none'}), expires in {int(cred.expires_in)}s"
                   + (f"; wrote {wrote}" if wrote else ""), err=True)
    elif fmt is None:
        fmt = "env"
    if fmt == "env":
        out.write(render_env(variables))
    elif fmt == "dotenv":
        out.write(render_dotenv(variables))
    elif fmt == "json":
        out.write(render_json(cred))
    out.flush()
