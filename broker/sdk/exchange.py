"""`broker exchange`: the CI step — find the job's attestation, exchange it, hand the credential on.

    broker exchange --target payments-db [--scope read] [--ttl 10m] [--broker URL] [--audience A]
                    [--format env|dotenv|json|output] [--subject-token-file PATH]
                    [--gitlab-token-var NAME] [--k8s-token-file PATH]
                    [--retries N] [--retry-deadline SECONDS]

Standard library only, like the rest of :mod:`broker.sdk`: a client-only install
(``pip install --no-deps nhi-broker``, no Flask, gunicorn, click or rich) runs it as
``python -m broker.sdk.exchange …``; ``broker exchange …`` is the same command.

The attestation comes from (first match): ``--subject-token-file``; GitHub Actions (an ID token
requested from ``ACTIONS_ID_TOKEN_REQUEST_URL`` for the broker's audience — the job needs
``permissions: id-token: write``); GitLab CI (the ``id_tokens`` variable, ``BROKER_ID_TOKEN`` by
default); a Kubernetes projected token file. See :func:`broker.sdk.detect_attestation`.

Variables: ``BROKER_ACCESS_TOKEN``, ``BROKER_CREDENTIAL_ID``, ``BROKER_TARGET``, ``BROKER_SCOPE``,
``BROKER_EXPIRES_AT`` (epoch seconds), ``BROKER_PARENT_ID`` (children only); for a database
credential also ``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, ``PGSSLMODE``
(when set) and ``BROKER_DSN``; for an AWS session (``type: aws`` targets) ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` and ``AWS_DEFAULT_REGION`` (the
first three masked in GitHub Actions); for ``mode: token`` ``AWS_ROLE_ARN``,
``AWS_ROLE_SESSION_NAME``, ``AWS_REGION`` and the token as ``BROKER_CREDENTIAL_WEB_IDENTITY_TOKEN``;
any other field of the credential as ``BROKER_CREDENTIAL_<FIELD>``.

Output: ``--format env`` (default outside GitHub Actions) prints shell ``export`` lines; assign
them first, then ``eval`` (``BROKER_ENV="$(broker exchange …)"`` then ``eval "$BROKER_ENV"``), so a
refused exchange stops a ``set -e`` script — ``eval "$(broker exchange …)"`` alone hides the
failure (``eval`` of nothing succeeds). ``dotenv`` prints ``NAME=value`` lines; ``json`` prints
one JSON object. In GitHub Actions (``GITHUB_ACTIONS=true``) the command first prints
``::add-mask::`` for every secret (token, password, DSN), then appends every variable to
``$GITHUB_ENV`` — **which exposes them to every later step of the job** — and the non-secret
ones (``credential-id``, ``target``, ``scope``, ``expires-at``) to ``$GITHUB_OUTPUT``.
``--format output`` is the step-scoped alternative: nothing goes to ``$GITHUB_ENV``; every
variable becomes a (masked) step output (``access-token``, ``pgpassword``, ``dsn``, …) that only
the steps naming ``steps.<id>.outputs.<name>`` receive. Both files use the multi-line-safe
``NAME<<DELIMITER`` syntax.

Errors are one line on stderr — the broker's ``error``, its stable ``reason`` code and the ledger
event to quote to an operator, then the ``error_description`` — and the exit status says what
failed: 1 the broker refused, 2 usage or no attestation, 3 the broker (or the token endpoint)
could not be reached.

What is safe to retry is retried with the same attestation (docs/ci.md "Retries"): ``503
temporarily_unavailable``, ``429 slow_down``, a failed connection, a timeout — up to
``--retries`` times (default ``$BROKER_EXCHANGE_RETRIES``, else 4) within ``--retry-deadline``
seconds (default ``$BROKER_EXCHANGE_RETRY_DEADLINE``, else 30), waiting ``Retry-After`` or an
exponential backoff with jitter. Each retry is one stderr line (attempt, status, error code);
the final error line says how many attempts were made, and the exit status is the one for
that last error.

When the target needs a person's approval (docs/approvals.md) the command prints the
``approval_url`` on stderr and polls (``--approval-timeout``, default 600 s) with a fresh
attestation each time, honouring ``slow_down``; it prints the credential once approved.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from broker.sdk import (
    DEFAULT_GITLAB_TOKEN_VAR,
    DEFAULT_K8S_TOKEN_FILE,
    AttestationUnavailable,
    Broker,
    BrokerError,
    BrokerUnreachable,
    Credential,
    RetryAttempt,
    detect_attestation,
)
from broker.sdk.retry import DEFAULT_RETRIES, DEFAULT_RETRY_DEADLINE

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
_PG_FIELDS = (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"),
              ("username", "PGUSER"), ("user", "PGUSER"), ("password", "PGPASSWORD"),
              ("sslmode", "PGSSLMODE"))
#: An aws credential's fields as the variables every AWS SDK and the CLI read (the access key id
#: is masked too, as aws-actions/configure-aws-credentials does).
_AWS_FIELDS = (("access_key_id", "AWS_ACCESS_KEY_ID", True),
               ("secret_access_key", "AWS_SECRET_ACCESS_KEY", True),
               ("session_token", "AWS_SESSION_TOKEN", True), ("region", "AWS_REGION", False),
               ("role_arn", "AWS_ROLE_ARN", False), ("role_session_name", "AWS_ROLE_SESSION_NAME", False))
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
    if secret.get("type") in ("aws", "aws-web-identity"):
        for field, name, is_secret in _AWS_FIELDS:
            if secret.get(field) is not None and not any(v.name == name for v in variables):
                variables.append(Variable(name, str(secret[field]), secret=is_secret,
                                          output="aws-region" if name == "AWS_REGION" else None))
                used.add(field)
        if secret.get("region"):
            variables.append(Variable("AWS_DEFAULT_REGION", str(secret["region"]), secret=False))
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


def output_name(variable: Variable) -> str:
    """The step-output name of a variable (``--format output``): its ``output`` name, else the
    variable's name without ``BROKER_``, lower-case, dashed (``access-token``, ``pgpassword``)."""
    if variable.output:
        return variable.output
    name = variable.name[len("BROKER_"):] if variable.name.startswith("BROKER_") else variable.name
    return name.lower().replace("_", "-")


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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="broker exchange",
                                description="Exchange this job's attestation for a credential (the CI step).")
    p.add_argument("--target", required=True,
                   help="The target to mint a credential for (the RFC 8693 audience).")
    p.add_argument("--scope", dest="scopes", action="append", default=[],
                   help="Scope(s) to request; repeat or space-separate.")
    p.add_argument("--ttl", default=None,
                   help="Ask for a shorter lifetime than the policy allows (90s, 5m, 1h).")
    p.add_argument("--broker", dest="broker_url", default=os.environ.get("BROKER_URL") or None,
                   help="The broker's URL (default: $BROKER_URL).")
    p.add_argument("--audience", default=os.environ.get("BROKER_AUDIENCE") or None,
                   help="Audience of the requested attestation (default: $BROKER_AUDIENCE, else "
                        "the broker URL).")
    p.add_argument("--format", dest="fmt", choices=["env", "dotenv", "json", "output"], default=None,
                   help="What to print (default: env; in GitHub Actions nothing but masks and a "
                        "summary). output: GitHub step outputs only, nothing in $GITHUB_ENV.")
    p.add_argument("--subject-token-file", default=None,
                   help="Read the attestation from this file instead of detecting it.")
    p.add_argument("--gitlab-token-var",
                   default=os.environ.get("BROKER_GITLAB_TOKEN_VAR") or DEFAULT_GITLAB_TOKEN_VAR,
                   help=f"GitLab CI: the id_tokens variable holding the attestation "
                        f"(default {DEFAULT_GITLAB_TOKEN_VAR}).")
    p.add_argument("--k8s-token-file",
                   default=os.environ.get("BROKER_K8S_TOKEN_FILE") or DEFAULT_K8S_TOKEN_FILE,
                   help=f"Kubernetes: the projected service-account token file "
                        f"(default {DEFAULT_K8S_TOKEN_FILE}).")
    p.add_argument("--timeout", type=float, default=30.0, help="Seconds per HTTP request (30).")
    p.add_argument("--approval-timeout", type=float, default=600.0,
                   help="Seconds to wait for a person's approval, when the target needs one (600).")
    p.add_argument("--retries", type=_count,
                   default=os.environ.get("BROKER_EXCHANGE_RETRIES") or DEFAULT_RETRIES,
                   help=f"Retries after the first attempt of what is safe to retry (503, 429, a "
                        f"failed connection, a timeout); 0 = off (default "
                        f"$BROKER_EXCHANGE_RETRIES, else {DEFAULT_RETRIES}).")
    p.add_argument("--retry-deadline", type=_seconds,
                   default=os.environ.get("BROKER_EXCHANGE_RETRY_DEADLINE") or DEFAULT_RETRY_DEADLINE,
                   help=f"Seconds all attempts of a request may take together (default "
                        f"$BROKER_EXCHANGE_RETRY_DEADLINE, else {DEFAULT_RETRY_DEADLINE:.0f}).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (see the module docstring)."""
    args = parser().parse_args(argv)
    github = os.environ.get("GITHUB_ACTIONS") == "true"
    try:
        cred = _exchange(target=args.target, scopes=tuple(args.scopes), ttl=args.ttl,
                         broker_url=args.broker_url, audience=args.audience,
                         subject_token_file=args.subject_token_file,
                         gitlab_token_var=args.gitlab_token_var,
                         k8s_token_file=args.k8s_token_file, timeout=args.timeout,
                         approval_timeout=args.approval_timeout, retries=args.retries,
                         retry_deadline=args.retry_deadline)
        _emit(cred, fmt=args.fmt, github=github)
    except _Fail as exc:
        _echo(_fail_line(exc.message, github=github))
        return exc.code
    return 0


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _exchange(*, target: str, scopes: tuple[str, ...], ttl: str | None, broker_url: str | None,
              audience: str | None, subject_token_file: str | None, gitlab_token_var: str,
              k8s_token_file: str, timeout: float, approval_timeout: float = 600.0,
              retries: int = DEFAULT_RETRIES,
              retry_deadline: float = DEFAULT_RETRY_DEADLINE) -> Credential:
    if not broker_url:
        raise _Fail(EXIT_USAGE, "no broker URL: pass --broker or set BROKER_URL")
    try:
        announced: set[str] = set()

        def pending(body: dict[str, Any]) -> None:
            approval_id = str(body.get("approval_id"))
            if approval_id not in announced and body.get("approval_url"):
                announced.add(approval_id)
                _echo(f"broker exchange: waiting for a person to approve: {body['approval_url']}")

        def retrying(notice: RetryAttempt) -> None:
            _echo(f"broker exchange: attempt {notice.attempt}/{notice.max_attempts} failed: "
                  f"{_error_text(notice.error)}; retrying in {notice.delay:.1f}s")

        broker = Broker(broker_url, timeout=timeout, approval_timeout=approval_timeout,
                        on_approval_pending=pending, retries=retries,
                        retry_deadline=retry_deadline, on_retry=retrying)
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
        raise _Fail(EXIT_UNREACHABLE, _error_text(exc)) from None
    except BrokerError as exc:
        raise _Fail(EXIT_REFUSED, str(exc)) from None


def _error_text(exc: BrokerError) -> str:
    """The broker's error as the command prints it; no answer at all: what failed, and how many
    attempts were made (an answer's text carries its own count)."""
    if not isinstance(exc, BrokerUnreachable):
        return str(exc)
    text = str(exc.description)
    if exc.attempts is not None:
        text += f" ({exc.attempts} attempt{'' if exc.attempts == 1 else 's'})"
    return text


def _emit(cred: Credential, *, fmt: str | None, github: bool) -> None:
    variables = credential_variables(cred)
    out = sys.stdout
    if fmt == "output":
        # Step-scoped: masks first, then every variable as a step output; nothing in $GITHUB_ENV.
        output_file = os.environ.get("GITHUB_OUTPUT")
        if not output_file:
            raise _Fail(EXIT_USAGE, "--format output writes GitHub step outputs: $GITHUB_OUTPUT is not set")
        out.write(mask_commands(variables))
        out.flush()
        try:
            _append(output_file, github_file_entries([(output_name(v), v.value) for v in variables]))
        except OSError as exc:
            raise _Fail(EXIT_USAGE, f"cannot write $GITHUB_OUTPUT: "
                                    f"{exc.strerror or type(exc).__name__}") from None
        _echo(f"broker exchange: credential {cred.credential_id} for {cred.target} "
              f"(scope: {' '.join(cred.scope) or 'none'}), expires in {int(cred.expires_in)}s; "
              f"wrote step outputs only")
        return
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
        _echo(f"broker exchange: credential {cred.credential_id} for {cred.target} "
              f"(scope: {' '.join(cred.scope) or 'none'}), expires in {int(cred.expires_in)}s"
              + (f"; wrote {wrote}" if wrote else ""))
    elif fmt is None:
        fmt = "env"
    if fmt == "env":
        out.write(render_env(variables))
    elif fmt == "dotenv":
        out.write(render_dotenv(variables))
    elif fmt == "json":
        out.write(render_json(cred))
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
