"""The schema of each policy document kind, as data: keys, types, validators, defaults.

``kind: issuer`` (:data:`ISSUER`), ``kind: policy`` (:func:`policy_block`, with its nested
:data:`APPROVAL`, :data:`MAY_ACT` and ``derive`` entries :data:`DERIVE_ENTRY`), ``kind: client``
(:data:`CLIENT`), ``kind: human-idp`` (:data:`HUMAN_IDP`); ``kind: target`` takes its common
keys from :data:`TARGET_COMMON` and the rest from the target kind (:func:`target_block`).
The walker (:mod:`broker.policy.walk`) reads a document against its block; the few values no
spec describes (claim patterns, a ``run`` map, algorithms…) have a reader below, and rules
spanning keys are the blocks' ``check`` functions. :mod:`broker.policy.load` puts the results
together across documents and files. The user-facing description of every key is in the
docstring of :mod:`broker.policy.load` and in docs/policies.md.
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.policy.model import (
    DELEGATION_SUBJECT_TOKENS,
    MAX_DERIVE_DEPTH,
    ApprovalRule,
    ClaimMatcher,
    DeriveRule,
    MayAct,
    claim_text,
)
from broker.policy.patterns import compile_exact, compile_glob, compile_regex
from broker.policy.presets import ASYMMETRIC_ALGORITHMS, PRESETS
from broker.policy.source import Located, type_name
from broker.policy.walk import INVALID, Walker, valid
from broker.targets.keys import (
    Anything,
    Block,
    Boolean,
    Choice,
    Custom,
    Duration,
    Integer,
    Key,
    ListOf,
    Strings,
    TargetSchema,
    Text,
)

DEFAULT_PRESET = "oidc"
DEFAULT_LEEWAY = 60
MAX_LEEWAY = 300
DEFAULT_APPROVAL_EXPIRES_IN = 1800
MAX_APPROVAL_EXPIRES_IN = 7 * 86400
DEFAULT_HUMAN_ALGORITHMS = ("RS256", "ES256")
DEFAULT_DELEGATION_MAX_TTL = 86400
MAX_DELEGATION_TTL = 30 * 86400
CLIENT_PERMISSIONS = ("audit", "introspect", "revoke")
#: What a delegation policy's ``match`` may name: the person, as the human IdP vouches for them.
PERSON_CLAIMS = frozenset({"email", "groups", "username", "sub"})

_CLAIM_PATH = re.compile(r"[^\s{}.]+(?:\.[^\s{}.]+)*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_RUN_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")      # RFC 6749 §3.3 scope-token
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")
_GROUP = re.compile(r"[^\s\x00-\x1f\x7f]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATTERN_KEYS = ("glob", "regex")


# ---------------------------------------------------------------------------- value checks

def claim_path_ok(path: Any) -> bool:
    return isinstance(path, str) and _CLAIM_PATH.fullmatch(path) is not None


def _claim_path_problem(value: str) -> str | None:
    return None if claim_path_ok(value) else "is not a claim name or dotted path"


def _url_checker(*, allow_query: bool) -> Any:
    def check(value: str) -> str | None:
        return url_problem(value, allow_query=allow_query)
    return check


def url_problem(value: str, *, allow_query: bool) -> str | None:
    """What is wrong with an issuer or JWKS URL: https, no credentials, no fragment (and, for
    an issuer, no query); http only for loopback hosts."""
    if value != value.strip() or any(ch.isspace() for ch in value):
        return "must not contain whitespace"
    try:
        parts = urlsplit(value)
        parts.port                                      # noqa: B018 - validates the port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("https", "http"):
        return f"must be an https URL, got {value!r}"
    host = parts.hostname
    if not host:
        return f"has no host: {value!r}"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if parts.fragment or value.endswith("#"):
        return "must not contain a fragment"
    if not allow_query and (parts.query or "?" in value):
        return "must not contain a query"
    if parts.scheme == "http" and not _is_loopback(host):
        return (f"must use https; http is allowed only for loopback hosts "
                f"(127.0.0.0/8, ::1, localhost), got {value!r}")
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _template_problem(template: str) -> str | None:
    placeholders = _PLACEHOLDER.findall(template)
    rest = _PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        return f"has an unbalanced '{{' or '}}': {template!r}"
    if not placeholders:
        return f"must contain at least one {{claim}} placeholder: {template!r}"
    for placeholder in placeholders:
        if not claim_path_ok(placeholder):
            return f"has a malformed placeholder {{{placeholder}}} (want a claim name or dotted path)"
    return None


def _known_preset(value: str) -> str | None:
    return None if value in PRESETS else f"unknown preset {value!r} (one of: {', '.join(sorted(PRESETS))})"


# A few specs used by several kinds.
ISSUER_URL = Text(check=_url_checker(allow_query=False), mismatch="{label} {problem}")
JWKS_URL = Text(check=_url_checker(allow_query=True), mismatch="{label} {problem}")
SCOPES = Strings(allow_empty=True, item=Text(
    pattern=_SCOPE, mismatch="scope {value!r} must not contain spaces, '\"' or '\\'"))
LEEWAY = Key(Integer(0, MAX_LEEWAY, f"{{label}} must be whole seconds from 0 to {MAX_LEEWAY}, got {{shown}}"),
             default=DEFAULT_LEEWAY)
REQUIRED = Key(Anything(), required=True)       # `kind` and `name`: read by the loader itself


# ---------------------------------------------------------------------------- readers

def read_algorithms(w: Walker, node: Located, label: str) -> Any:
    """A non-empty allowlist of asymmetric JWS algorithms; ``none`` and HMAC explained."""
    if not node.is_list or not node.elements:
        return w.say(node, "algorithms must be a non-empty list of algorithm names, got {got}", label)
    allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
    result: list[str] = []
    bad = False
    for element in node.elements:
        alg = element.data
        if w.quiet(element):
            bad = True
        elif not isinstance(alg, str):
            bad = w.say(element, "algorithms must be strings, got {got}", label) is INVALID
        elif alg.lower() == "none":
            w.error(element.line, "algorithm 'none' is never allowed: an unsigned token proves nothing")
            bad = True
        elif alg.upper().startswith("HS"):
            w.error(element.line, f"algorithm {alg!r} is not allowed: HMAC uses a shared secret, "
                                  f"which cannot prove which workload signed")
            bad = True
        elif alg not in ASYMMETRIC_ALGORITHMS:
            w.error(element.line, f"unknown algorithm {alg!r} (allowed: {allowed})")
            bad = True
        elif alg not in result:
            result.append(alg)
    return INVALID if bad else tuple(result)


def read_run(w: Walker, node: Located, label: str) -> Any:
    """``run``: run field -> claim path, or null to remove the preset's field (merged over the
    preset by :func:`_issuer_check`)."""
    if not node.is_mapping:
        return w.say(node, "run must be a mapping of run field -> claim, got {got}", label)
    assert node.items is not None
    run: dict[str, Any] = {}
    ok = True
    for field, (key_line, value) in node.items.items():
        if not _RUN_FIELD.fullmatch(field):
            w.error(key_line, f"run field {field!r} must be a letter or '_' then letters, digits or '_'")
            ok = False
        elif w.quiet(value):
            ok = False
        elif value.data is not None and not claim_path_ok(value.data):
            ok = w.say(value, "run.{field} must be a claim name or dotted path (or null to remove the "
                              "preset's field), got {shown}", label, field=field) is not INVALID
        else:
            run[field] = value.data
    return run if ok else INVALID


def read_jwks_file(w: Walker, node: Located, label: str) -> Any:
    """A local JSON key set, relative to the policy file; read now, stored as an absolute path."""
    value = node.data
    if not isinstance(value, str) or not value.strip():
        return w.say(node, "{label} must be a non-empty string, got {got}", label)
    path = Path(value)
    path = (path if path.is_absolute() else w.base_dir / path).resolve()
    if not path.is_file():
        return w.say(node, "jwks_file {value!r} does not exist (looked for {path})", label, path=path)
    try:
        key_set = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return w.say(node, "jwks_file {value!r} is not a readable JSON key set ({error})", label,
                     error=type(exc).__name__)
    if not isinstance(key_set, dict) or not isinstance(key_set.get("keys"), list):
        return w.say(node, "jwks_file {value!r} is not a JSON key set (want an object with a "
                           "'keys' list)", label)
    return str(path)


def read_match(w: Walker, node: Located, label: str) -> Any:
    """A ``match`` mapping: claim path -> pattern(s), compiled (:mod:`broker.policy.patterns`)."""
    if not node.is_mapping or not node.items:
        return w.say(node, "{label} must be a non-empty mapping of claim -> pattern, got {got}", label)
    matchers: list[ClaimMatcher] = []
    ok = True
    for claim, (key_line, spec) in node.items.items():
        if not claim_path_ok(claim):
            w.error(key_line, f"{label}: {claim!r} is not a claim name or dotted path")
            ok = False
            continue
        patterns = _patterns(w, claim, spec, label)
        if patterns is INVALID:
            ok = False
            continue
        matchers.append(ClaimMatcher(claim=claim, patterns=patterns, spec=spec.data))
    return tuple(matchers) if ok else INVALID


def _patterns(w: Walker, claim: str, spec: Located, label: str) -> Any:
    if w.quiet(spec):
        return INVALID
    if not spec.is_list:
        one = _pattern(w, claim, spec, label)
        return INVALID if one is INVALID else (one,)
    assert spec.elements is not None
    if not spec.elements:
        w.error(spec.line, f"{label}.{claim}: an empty list matches nothing")
        return INVALID
    patterns = []
    for element in spec.elements:
        if w.quiet(element):
            continue
        if element.is_list:
            w.error(element.line, f"{label}.{claim}: lists of patterns cannot be nested")
            continue
        pattern = _pattern(w, claim, element, label)
        if pattern is not INVALID:
            patterns.append(pattern)
    return tuple(patterns) if len(patterns) == len(spec.elements) else INVALID


def _pattern(w: Walker, claim: str, spec: Located, label: str) -> Any:
    value = spec.data
    if isinstance(value, (bool, int, str)):
        return compile_exact(claim_text(value))  # type: ignore[arg-type]
    if not spec.is_mapping:
        hint = "; quote it to match text" if isinstance(value, float) else ""
        w.error(spec.line, f"{label}.{claim}: a pattern is a string, integer, boolean, "
                           f"{{glob: ...}}, {{regex: ...}} or a list of these, got {type_name(value)}{hint}")
        return INVALID
    assert spec.items is not None
    keys = list(spec.items)
    if len(keys) != 1 or keys[0] not in _PATTERN_KEYS:
        w.error(spec.line, f"{label}.{claim}: a pattern mapping has exactly one key, 'glob' or "
                           f"'regex', got {', '.join(repr(k) for k in keys) or 'none'}")
        return INVALID
    kind = keys[0]
    body = spec.items[kind][1]
    if w.quiet(body):
        return INVALID
    if not isinstance(body.data, str) or body.data == "":
        return w.say(body, f"{label}.{claim}: {kind} must be a non-empty string, got {{got}}", label)
    try:
        return compile_glob(body.data) if kind == "glob" else compile_regex(body.data)
    except (re.error, ValueError, OverflowError) as exc:    # OverflowError: a{99999999999}
        w.error(body.line, f"{label}.{claim}: invalid {kind} {body.data!r}: {exc}")
        return INVALID
    except RecursionError:                                  # re's parser nests per group
        w.error(body.line, f"{label}.{claim}: invalid {kind}: groups nested too deeply")
        return INVALID


def _reference(kind: str, spec: Any) -> Custom:
    """``spec``, and a reference to a ``kind`` document checked once every file is read."""
    def read(w: Walker, node: Located, label: str) -> Any:
        value = w.read(spec, node, label)
        if value is not INVALID:
            if node.is_list:
                w.references.extend((kind, element) for element in node.elements or ())
            else:
                w.references.append((kind, node))
        return value
    return Custom(read)


def read_approvers(w: Walker, node: Located, label: str) -> Any:
    """``approval.approvers``: ``group:<name>`` or email addresses, each once."""
    if not node.is_list or not node.elements:
        return w.say(node, "approval: approvers must be a non-empty list of 'group:<name>' or "
                           "email addresses, got {got}", label)
    emails: list[str] = []
    groups: list[str] = []
    ok = True
    for element in node.elements:
        value = element.data
        if w.quiet(element):
            ok = False
        elif not isinstance(value, str) or not value.strip():
            ok = w.say(element, "approval: an approver is 'group:<name>' or an email address, "
                                "got {got}", label) is not INVALID
        elif value.startswith("group:"):
            group = value[len("group:"):]
            if not _GROUP.fullmatch(group):
                ok = w.say(element, "approval: group name in {value!r} must be non-empty, without "
                                    "spaces", label) is not INVALID
            elif group in groups:
                ok = w.say(element, "approval: approvers lists {value!r} twice", label) is not INVALID
            else:
                groups.append(group)
        elif _EMAIL.fullmatch(value):
            if value.lower() in emails:
                ok = w.say(element, "approval: approvers lists {value!r} twice", label) is not INVALID
            else:
                emails.append(value.lower())
        else:
            ok = w.say(element, "approval: an approver is 'group:<name>' or an email address, "
                                "got {value!r}", label) is not INVALID
    return (tuple(emails), tuple(groups)) if ok else INVALID


def read_derive(w: Walker, node: Located, label: str) -> Any:
    """``derive``: a non-empty list of target names or :data:`DERIVE_ENTRY` mappings, each
    target once."""
    if not node.is_list or not node.elements:
        return w.say(node, "derive must be a non-empty list of target names or "
                           "{{target, scopes, max_ttl, from}} mappings, got {got}", label)
    rules: list[DeriveRule] = []
    seen: dict[str, int] = {}
    ok = True
    for element in node.elements:
        if w.quiet(element):
            ok = False
            continue
        if isinstance(element.data, str):
            rule = _reference("target", DERIVE_TARGET).read(w, element, "derive: target")
            rule = INVALID if rule is INVALID else DeriveRule(target=rule)
        elif element.is_mapping:
            rule = w.block(DERIVE_ENTRY, element)
        else:
            rule = w.say(element, "derive: an entry is a target name or a mapping with 'target', "
                                  "got {got}", label)
        if rule is INVALID:
            ok = False
        elif rule.target in seen:
            w.error(element.line, f"derive lists target {rule.target!r} twice (first at line "
                                  f"{seen[rule.target]}); use 'from' in one entry instead")
            ok = False
        else:
            seen[rule.target] = element.line
            rules.append(rule)
    return tuple(rules) if ok else INVALID


def read_secret_sha256(w: Walker, node: Located, label: str) -> Any:
    value = node.data
    if not isinstance(value, str):
        return w.say(node, "secret_sha256 must be a quoted string of 64 hex digits, got {got}", label)
    if not _SHA256_HEX.fullmatch(value):
        # never echo the value: someone may have pasted the secret itself here
        w.error(node.line, f"secret_sha256 must be 64 hex digits (a SHA-256 of the secret, not "
                           f"the secret), got {len(value)} characters")
        return INVALID
    return value.lower()


def refuse_inline_secret(w: Walker, node: Located, label: str) -> Any:
    # never echo the value: it is a secret someone pasted into a policy file
    w.error(w.key_line, "client_secret must never be written in a policy file: use "
                        "client_secret_env or client_secret_file")
    return INVALID


def read_ci_logins(w: Walker, node: Located, label: str) -> Any:
    """``ci_logins``: a run's ``actor`` (CI login) -> the email(s) of the same person, for
    ``not_self``. Keys are compared case-insensitively (stored lower-case)."""
    if not node.is_mapping:
        return w.say(node, "ci_logins must be a mapping of CI login -> email (or list of "
                           "emails), got {got}", label)
    assert node.items is not None
    result: dict[str, tuple[str, ...]] = {}
    ok = True
    for login, (line, value) in node.items.items():
        emails = []
        for element in (value.elements if value.is_list else [value]) or ():
            if w.quiet(element):
                ok = False
            elif not isinstance(element.data, str) or not _EMAIL.fullmatch(element.data):
                w.error(element.line, f"ci_logins.{login}: want an email address (or a list of them)")
                ok = False
            else:
                emails.append(element.data.lower())
        if not emails and ok:
            w.error(line, f"ci_logins.{login}: want an email address (or a list of them)")
            ok = False
        result[str(login).lower()] = tuple(emails)
    return result if ok else INVALID


# ---------------------------------------------------------------------------- kind: issuer

def _issuer_check(w: Walker, node: Located, values: dict[str, Any]) -> None:
    """Fill in the preset: ``issuer`` (required when the preset has none), ``algorithms``,
    ``principal``, and ``run`` / ``required_claims`` merged over the preset's."""
    preset_name = values.get("preset", DEFAULT_PRESET)
    if preset_name is INVALID:
        return
    preset = PRESETS[preset_name]
    values["preset"] = preset_name
    if "issuer" not in values:
        if preset.issuer is None:
            w.error(node.line, f"missing required key 'issuer' (preset {preset_name!r} has no "
                               f"default issuer)")
        else:
            values["issuer"] = preset.issuer
    if "jwks_uri" in values and "jwks_file" in values:
        w.error(node.key_line("jwks_file"), "give at most one of 'jwks_uri' and 'jwks_file'")
    values.setdefault("algorithms", preset.algorithms)
    values.setdefault("principal", preset.principal)
    run = dict(preset.run)
    if valid(values, "run"):
        run_node = node.get("run")
        assert run_node is not None
        for field, claim in values["run"].items():
            if claim is None and field not in run:
                w.error(run_node.items[field][1].line,  # type: ignore[index]
                        f"run field {field!r} is null but preset {preset.name!r} has no such field "
                        f"to remove")
            elif claim is None:
                run.pop(field)
            else:
                run[field] = claim
    if values.get("run") is not INVALID:
        values["run"] = run
    claims = list(preset.required_claims)
    if valid(values, "required_claims"):
        claims.extend(c for c in values["required_claims"] if c not in claims)
        values["required_claims"] = tuple(dict.fromkeys(claims))
    elif "required_claims" not in values:
        values["required_claims"] = tuple(claims)


ISSUER = Block({
    "kind": REQUIRED, "name": REQUIRED,
    "preset": Key(Text(check=_known_preset, mismatch="{problem}")),
    "issuer": Key(ISSUER_URL),
    "audience": Key(Text(), required=True),
    "jwks_uri": Key(JWKS_URL),
    "jwks_file": Key(Custom(read_jwks_file)),
    "algorithms": Key(Custom(read_algorithms)),
    "principal": Key(Text(check=_template_problem, mismatch="principal {problem}")),
    "run": Key(Custom(read_run)),
    "required_claims": Key(Strings(allow_empty=True, item=Text(
        check=_claim_path_problem, mismatch="required_claims: {value!r} {problem}"))),
    "max_token_age": Key(Duration()),
    "leeway": LEEWAY,
    # OIDC Core §3.1.3.7: an `aud` listing other audiences is refused unless this says true.
    "allow_extra_audiences": Key(Boolean(), default=False),
}, check=_issuer_check)


# ---------------------------------------------------------------------------- kind: target

TARGET_COMMON: dict[str, Key] = {
    "kind": REQUIRED, "name": REQUIRED,
    "type": Key(Anything(), required=True),          # read first, by the loader: it picks the kind
    "audience": Key(Text()),
    "max_ttl": Key(Duration(), required=True),
}


def target_block(schema: TargetSchema | None) -> Block:
    """A target document's keys: the common ones and those of its kind (``None``: the type is
    unknown, so only the common keys can be judged)."""
    return Block({**TARGET_COMMON, **(schema.keys if schema is not None else {})})


# ---------------------------------------------------------------------------- kind: policy

def _policy_check(w: Walker, node: Located, values: dict[str, Any]) -> None:
    if valid(values, "max_depth") and "derive" not in values:
        w.error(node.get("max_depth").line, "max_depth has no effect without derive")  # type: ignore[union-attr]
        values["max_depth"] = INVALID


def _approval(values: dict[str, Any]) -> ApprovalRule:
    emails, groups = values["approvers"]
    return ApprovalRule(emails=emails, groups=groups, required=values["required"],
                        not_self=values["not_self"], expires_in=values["expires_in"])


def _approval_check(w: Walker, node: Located, values: dict[str, Any]) -> None:
    if not (valid(values, "approvers") and valid(values, "required")) or "required" not in (node.items or {}):
        return
    emails, groups = values["approvers"]
    if not groups and emails and values["required"] > len(emails):
        n = len(emails)
        w.error(node.get("required").line,  # type: ignore[union-attr]
                f"approval: required is {values['required']} but only {n} "
                f"approver{'s are' if n != 1 else ' is'} listed")
        values["required"] = INVALID


APPROVAL = Block({
    "approvers": Key(Custom(read_approvers), required=True),
    "required": Key(Integer(1, None, "{label} must be a whole number of approvers, at least 1, "
                                     "got {shown}"), default=1),
    "not_self": Key(Boolean(), default=True),
    "expires_in": Key(Duration(60, MAX_APPROVAL_EXPIRES_IN, out_of_range="{label} must be from 1m to 7d"),
                      default=DEFAULT_APPROVAL_EXPIRES_IN),
}, name="approval", join=": ", not_mapping="approval must be a mapping with 'approvers', got {got}",
    check=_approval_check, build=_approval)

MAY_ACT = Block({
    "issuer": Key(_reference("issuer", Text(message="{label} must be an issuer name, got {got}")),
                  required=True, missing="may_act: missing required key 'issuer' (the actor's "
                                         "attestation issuer)"),
    "match": Key(Custom(lambda w, node, label: read_match(w, node, "may_act.match")), required=True,
                 missing="may_act: missing required key 'match' (claims of the actor's attestation)"),
    "subject_tokens": Key(ListOf(
        Choice(DELEGATION_SUBJECT_TOKENS,
               message=f"{{label}} entries are {' or '.join(DELEGATION_SUBJECT_TOKENS)}, each once,"
                       " got {shown}"),
        allow_empty=False, unique=True,
        not_list=f"{{label}} must be a non-empty list of {', '.join(DELEGATION_SUBJECT_TOKENS)}, got {{got}}",
        empty=f"{{label}} must be a non-empty list of {', '.join(DELEGATION_SUBJECT_TOKENS)}, got {{got}}",
        twice=f"{{label}} entries are {' or '.join(DELEGATION_SUBJECT_TOKENS)}, each once, got {{shown}}"),
        default=["delegation"]),
}, name="may_act", join=": ",
    not_mapping="may_act must be a mapping {{issuer, match, subject_tokens}}, got {got}",
    build=lambda v: MayAct(issuer=v["issuer"], match=v["match"], subject_tokens=tuple(v["subject_tokens"])))

DERIVE_TARGET = Text(message="{label} must be a target name, got {got}")
_DERIVE_BAD_ITEM = "{label} must be a list of non-empty strings, got {got}"
DERIVE_ENTRY = Block({
    "target": Key(_reference("target", DERIVE_TARGET), required=True,
                  missing="derive: an entry mapping needs 'target'"),
    "scopes": Key(Strings(allow_empty=True, item=Text(
        pattern=_SCOPE, mismatch="derive: scope {value!r} must not contain spaces, '\"' or '\\'"),
        bad_item=_DERIVE_BAD_ITEM)),
    "max_ttl": Key(Duration()),
    "from": Key(_reference("target", Strings(
        not_list="{label} must be a non-empty list of strings, got {got}",
        empty="{label} must be a non-empty list of strings, got {got}", bad_item=_DERIVE_BAD_ITEM))),
}, name="derive", join=": ",
    build=lambda v: DeriveRule(target=v["target"], scopes=v.get("scopes"), max_ttl=v.get("max_ttl"),
                               from_targets=v.get("from")))

#: Keys of ``kind: policy`` besides the extra ones (:data:`EXTRA_POLICY_KEYS`).
POLICY_CORE: dict[str, Key] = {
    "kind": REQUIRED, "name": REQUIRED,
    "issuer": Key(_reference("policy-issuer", Text()), required=True),
    "targets": Key(_reference("target", Strings()), required=True),
    "match": Key(Custom(read_match), required=True),
    "scopes": Key(SCOPES),
    "max_ttl": Key(Duration()),
}
#: Keys later issues added to ``kind: policy``, each with its reader; a key listed in
#: ``broker.policy.load.ALLOWED_EXTRA_POLICY_KEYS`` without a reader here is kept as written.
EXTRA_POLICY_KEYS: dict[str, Key] = {
    "derive": Key(Custom(read_derive)),
    "max_depth": Key(Integer(1, MAX_DERIVE_DEPTH, f"{{label}} must be a whole number from 1 to "
                                                  f"{MAX_DERIVE_DEPTH}, got {{shown}}")),
    "approval": Key(APPROVAL),
    "may_act": Key(MAY_ACT),
}


def policy_block(extra_keys: frozenset[str]) -> Block:
    extra = {k: EXTRA_POLICY_KEYS.get(k, Key(Anything())) for k in sorted(extra_keys)}
    return Block({**POLICY_CORE, **extra}, check=_policy_check)


# ---------------------------------------------------------------------------- kind: client

CLIENT = Block({
    "kind": REQUIRED, "name": REQUIRED,
    "secret_sha256": Key(Custom(read_secret_sha256), required=True),
    "may": Key(Strings(item=Choice(CLIENT_PERMISSIONS, message=f"unknown permission {{value!r}} "
                                                               f"(one of: {', '.join(CLIENT_PERMISSIONS)})")),
               required=True),
})


# ---------------------------------------------------------------------------- kind: human-idp

def _human_idp_check(w: Walker, node: Located, values: dict[str, Any]) -> None:
    assert node.items is not None
    given = [k for k in ("client_secret_env", "client_secret_file") if k in node.items]
    if len(given) != 1 and "client_secret" not in node.items:
        w.error(node.line, "give exactly one of 'client_secret_env' and 'client_secret_file'")
    if valid(values, "client_secret_file"):
        path = Path(values["client_secret_file"])
        values["client_secret_file"] = str((path if path.is_absolute() else w.base_dir / path).resolve())
    if valid(values, "scopes") and "openid" not in values["scopes"]:
        w.error(node.key_line("scopes"), "scopes must include 'openid'")


_CLAIM_NAME = Text(check=_claim_path_problem, mismatch="{label} must be a claim name or dotted path")
HUMAN_IDP = Block({
    "kind": REQUIRED, "name": REQUIRED,
    "client_secret": Key(Custom(refuse_inline_secret)),      # allowed only to say why it is not
    "issuer": Key(ISSUER_URL, required=True),
    "client_id": Key(Text(), required=True),
    "client_secret_env": Key(Text(pattern=_ENV_NAME, mismatch="{label} must be an environment "
                                                              "variable name")),
    "client_secret_file": Key(Text()),
    "email_claim": Key(_CLAIM_NAME, default="email"),
    "groups_claim": Key(_CLAIM_NAME, default="groups"),
    "username_claim": Key(_CLAIM_NAME, default="preferred_username"),
    "audience": Key(Text()),
    "algorithms": Key(Custom(read_algorithms), default=DEFAULT_HUMAN_ALGORITHMS),
    "jwks_uri": Key(JWKS_URL),
    "scopes": Key(SCOPES, default=("openid", "email", "profile")),
    "ci_logins": Key(Custom(read_ci_logins), default={}),
    "delegation_max_ttl": Key(Duration(max=MAX_DELEGATION_TTL, out_of_range="{label} must be at most 30d"),
                              default=DEFAULT_DELEGATION_MAX_TTL),
    "leeway": LEEWAY,
}, check=_human_idp_check)
