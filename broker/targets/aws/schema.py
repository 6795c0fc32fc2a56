"""The keys of a ``type: aws`` target and AWS's own limits, checked when the policy loads.

::

    kind: target
    name: deploy-aws
    type: aws
    role_arn: arn:aws:iam::123456789012:role/deploy
    region: eu-west-1
    max_ttl: 15m                        # STS grants 900 s .. 12 h (and at most the role's maximum)
    session_policy_file: ./aws/deploy-readonly.json   # optional inline session policy
    scope_policies: {deploy:write: ./aws/deploy-write.json}   # more statements per granted scope
    tags: {repository: "{run.repository}", environment: "{run.environment}"}
    sts_endpoint_env: BROKER_AWS_STS_ENDPOINT   # optional; otherwise boto3's own settings
    mode: assume                        # assume (default): the broker calls STS | token
    session_name_prefix: ci-            # optional: RoleSessionName = prefix + credential id
    deny_policy_name: nhi-broker-revoked   # the role's inline policy revocation writes

Everything AWS would refuse is refused here, with ``file:line``: a ``max_ttl`` outside what STS
grants (and, through :attr:`TargetSchema.ttl_check`, a policy or ``derive`` rule that would grant
less than 900 s), a session name prefix that makes names longer than 64 characters or uses
characters outside ``[\\w+=,.@-]``, more than 50 session tags, tag keys over 128 characters,
literal tag values over 256, keys AWS reserves (``aws:``) or the broker sets itself, and session
policies that are not JSON policy documents or are longer than STS takes (2,048 characters).
Session policy files are read here, once: a request never reads a file.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.targets.keys import Boolean, Choice, FilePath, Key, MapOf, TargetSchema, Text

KIND = "aws"

#: What ``AssumeRoleWithWebIdentity`` accepts as ``DurationSeconds`` (the role's
#: ``MaxSessionDuration`` may be lower: ``broker policy check`` asks IAM).
MIN_SESSION_SECONDS = 900
MAX_SESSION_SECONDS = 43_200
#: The audience of the web-identity token: what IAM's OIDC provider lists as its client id.
STS_AUDIENCE = "sts.amazonaws.com"
DEFAULT_DENY_POLICY = "nhi-broker-revoked"
MODES = ("assume", "token")

# AWS limits (IAM User Guide, "IAM and AWS STS quotas"; STS API reference).
MAX_SESSION_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_SESSION_POLICY = 2048           # plaintext characters of the inline session policy
SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
NAME_CHARS = re.compile(r"[A-Za-z0-9_+=,.@-]*")
#: Tag keys and values: letters, digits, spaces and ``_ . : / = + - @`` (``\p{L}\p{Z}\p{N}``).
TAG_TEXT = re.compile(r"[\w .:/=+\-@]*")
TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]")
CREDENTIAL_ID_LENGTH = 26

#: Session tags the broker sets on every session (principal_tags of the web-identity token).
OWN_TAG_KEYS = ("credential_id", "run_id", "authorizer", "policy_digest")

_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/(?:[\x21-\x7e]+/)?[\w+=,.@-]{1,64}")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
#: ``{run.FIELD}``, ``{principal}``, ``{target}`` in a tag value.
PLACEHOLDER = re.compile(r"\{(run\.[A-Za-z0-9_]+|principal|target)\}")


# ---------------------------------------------------------------------------- single values

def _tag_key_problem(key: str) -> str | None:
    if not key or len(key) > MAX_TAG_KEY:
        return f"is not a session tag key (1 to {MAX_TAG_KEY} characters)"
    if not TAG_TEXT.fullmatch(key):
        return "is not a session tag key (letters, digits, spaces and _ . : / = + - @ only)"
    if key.lower().startswith("aws:"):
        return "uses the prefix 'aws:', which AWS reserves"
    if key.lower() in OWN_TAG_KEYS:
        return f"is a tag the broker sets itself ({', '.join(OWN_TAG_KEYS)})"
    return None


def _tag_value_problem(value: str) -> str | None:
    literal = PLACEHOLDER.sub("", value)
    if "{" in literal or "}" in literal:
        return ("has a brace that is not a placeholder ({run.FIELD}, {principal} or {target})")
    if len(literal) > MAX_TAG_VALUE:
        return f"is longer than a session tag value may be ({MAX_TAG_VALUE} characters)"
    if not TAG_TEXT.fullmatch(literal):
        return ("has characters a session tag value cannot have (letters, digits, spaces and "
                "_ . : / = + - @ only)")
    return None


def _session_name_prefix_problem(value: str) -> str | None:
    if not NAME_CHARS.fullmatch(value):
        return "has characters a role session name cannot have ([A-Za-z0-9_+=,.@-] only)"
    if len(value) + CREDENTIAL_ID_LENGTH > 64:
        return (f"makes session names longer than 64 characters (at most "
                f"{64 - CREDENTIAL_ID_LENGTH} before the {CREDENTIAL_ID_LENGTH}-character credential id)")
    return None


def _scope_problem(value: str) -> str | None:
    return None if _SCOPE.fullmatch(value) else "is not a scope token"


def ttl_problem(seconds: int) -> str | None:
    """What STS says of a session of ``seconds`` (None: it grants it)."""
    if seconds < MIN_SESSION_SECONDS:
        return (f"is shorter than the shortest session AWS STS grants (15m, "
                f"{MIN_SESSION_SECONDS} s)")
    if seconds > MAX_SESSION_SECONDS:
        return f"is longer than the longest session AWS STS grants (12h, {MAX_SESSION_SECONDS} s)"
    return None


def session_policy_problem(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """The policy document in ``path`` (parsed), or what is wrong with it."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__}): {path}"
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"is not JSON ({type(exc).__name__}): {path}"
    if not isinstance(document, dict) or not isinstance(document.get("Statement"), (list, dict)):
        return None, f"is not an IAM policy document (an object with 'Statement'): {path}"
    size = len(compact_json(document))
    if size > MAX_SESSION_POLICY:
        return None, (f"is {size} characters without whitespace; STS takes session policies of at "
                      f"most {MAX_SESSION_POLICY}: {path}")
    return document, None


def compact_json(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------- across keys

def _check_aws_target(ctx: Any) -> Iterator[Any]:  # noqa: C901 - one rule per branch, in doc order
    """Rules across keys of a ``type: aws`` target (``ctx``: a policy TargetContext). Reads the
    session policy files and keeps them parsed in ``session_policy`` / ``scope_session_policies``."""
    options = ctx.options
    mode = options.get("mode", "assume")
    if mode == "token":
        for key in ("session_policy_file", "scope_policies"):
            if key in options:
                yield ctx.problem(key, f"{key} has no effect with mode: token (whoever calls STS "
                                       f"with the token passes the session policy)")
    if isinstance(options.get("session_policy_file"), str):
        document, problem = session_policy_problem(options["session_policy_file"])
        if problem is not None:
            yield ctx.problem("session_policy_file", f"session_policy_file {problem}")
        else:
            options["session_policy"] = document
    scoped = options.get("scope_policies")
    if isinstance(scoped, dict):
        parsed: dict[str, Any] = {}
        for scope, path in scoped.items():
            if not isinstance(path, str):
                return                  # reported by the key's own reader
            document, problem = session_policy_problem(path)
            if problem is not None:
                yield ctx.problem("scope_policies", f"scope_policies[{scope}] {problem}")
            else:
                parsed[scope] = document
        options["scope_session_policies"] = parsed
    tags = options.get("tags")
    if isinstance(tags, dict):
        total = len(tags) + len(OWN_TAG_KEYS)
        if total > MAX_SESSION_TAGS:
            yield ctx.problem("tags", f"tags: {len(tags)} tags and the broker's {len(OWN_TAG_KEYS)} "
                                      f"({', '.join(OWN_TAG_KEYS)}) are {total}; a session takes at "
                                      f"most {MAX_SESSION_TAGS}")
        seen: dict[str, str] = {}
        for key in tags:
            if not isinstance(key, str):
                continue
            other = seen.get(key.lower())
            if other is not None:
                yield ctx.problem("tags", f"tags: {key!r} and {other!r} differ only in case; AWS "
                                          f"treats session tag keys case-insensitively")
            seen[key.lower()] = key


POLICY_KEYS = TargetSchema(KIND, validate=_check_aws_target, ttl_check=ttl_problem, keys={
    "role_arn": Key(Text(pattern=_ROLE_ARN, message="{label} must be an IAM role ARN like "
                                                   "arn:aws:iam::123456789012:role/deploy, got {shown}"),
                    required=True, missing="missing required key 'role_arn' (the IAM role to assume)"),
    "region": Key(Text(pattern=_REGION, message="{label} must be an AWS region like eu-west-1, got {shown}"),
                  required=True, missing="missing required key 'region' (where STS is called and "
                                         "the credential is used)"),
    "session_policy_file": Key(FilePath()),
    "scope_policies": Key(MapOf(FilePath(), key=_scope_problem, value_label="{label}[{key}]",
                                not_mapping="{label} must map a scope to a session policy file")),
    "tags": Key(MapOf(Text(check=_tag_value_problem, message="{label} must be a non-empty string",
                           mismatch="{label} {problem}"),
                      key=_tag_key_problem, bad_key="{label}: {value!r} {problem}",
                      not_mapping="{label} must map session tag keys to values (templates of "
                                  "{{run.FIELD}}, {{principal}}, {{target}})")),
    "transitive_tags": Key(Boolean(), default=True),
    "sts_endpoint_env": Key(Text(pattern=_ENV_NAME, message="{label} must be an environment variable name")),
    "mode": Key(Choice(MODES), default="assume"),
    "session_name_prefix": Key(Text(check=_session_name_prefix_problem,
                                    message="{label} must be a non-empty string",
                                    mismatch="{label} {problem}")),
    "deny_policy_name": Key(Text(pattern=_POLICY_NAME, message="{label} must be an IAM policy name "
                                                               "(1-128 of [A-Za-z0-9_+=,.@-])"),
                            default=DEFAULT_DENY_POLICY),
})
AWS_TARGET_KEYS = POLICY_KEYS.allowed_keys
