"""Load trust policies: strict YAML parse, then compile into :mod:`broker.policy.model` objects.

``BROKER_POLICY_DIR`` holds ``*.yaml`` / ``*.yml`` files (not recursive; hidden files skipped;
read in name order). Each file holds YAML documents, each with a ``kind``: ``issuer``,
``target``, ``policy``, ``client`` or ``human-idp``. Loading collects *every* problem of every
file (a bad document does not stop the next one) and raises one :class:`PolicyError` listing them as
``file:line: message``. A bad policy therefore fails at load or at ``broker policy check``,
never in the middle of a request.

Strictness: unknown keys, missing required keys, wrong types, duplicate keys, duplicate names
within a kind, unknown kinds/presets/target types and references to undefined issuers or
targets are all errors. Names match ``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$``.

Choices made here (the format is a user-facing contract; keep this list in step with the code):

``kind: issuer``
    Every preset field may be overridden. ``issuer`` is required when the preset has none
    (``kubernetes``, ``spiffe``, ``oidc``). ``preset`` defaults to ``oidc``.
    ``run`` is MERGED over the preset's run map: a listed field is added or replaces the
    preset's claim, a field set to ``null`` removes the preset's field (removing a field the
    preset does not have is an error, as it is most likely a typo).
    ``required_claims`` (optional list) ADDS to the preset's required claims; it cannot remove
    any.
    ``algorithms`` replaces the preset's allowlist; only :data:`ASYMMETRIC_ALGORITHMS`.
    ``issuer`` and ``jwks_uri`` are https URLs (http only for 127.0.0.0/8, ::1, localhost),
    without credentials or fragment (``issuer`` also without query). At most one of
    ``jwks_uri`` / ``jwks_file``; ``jwks_file`` is relative to the policy file's folder, must
    exist and hold a JSON key set (``{"keys": [...]}``); it is stored as an absolute path.
    ``principal`` is a template of literal text and ``{claim.path}`` placeholders (at least
    one; no stray braces). ``leeway`` is whole seconds 0..300 (default 60); ``max_token_age``
    a duration. ``allow_extra_audiences`` (boolean, default false): whether an attestation whose
    ``aud`` lists audiences besides the issuer's ``audience`` is accepted (OpenID Connect Core
    §3.1.3.7: by default it is refused).
``kind: target``
    ``type`` must be registered in :data:`broker.policy.targets.TARGET_TYPES`, which also
    says which extra keys the type allows. ``audience`` defaults to the name and must be unique
    among targets. ``max_ttl`` is required.
``kind: policy``
    ``match`` is required and non-empty: a policy that should accept every token of an issuer
    must say so (e.g. ``sub: {regex: ".*"}``). Pattern semantics: :mod:`broker.policy.patterns`.
    ``scopes`` is an optional list of RFC 6749 scope tokens. Keys in
    :data:`ALLOWED_EXTRA_POLICY_KEYS` are accepted, validated and kept, as written, in
    ``Policy.extra``; today ``derive`` and ``max_depth`` (fan-out, :mod:`broker.exchange.derive`):
    ``derive`` is a non-empty list whose entries are a target name or a mapping
    ``{target, scopes, max_ttl, from}`` (``target`` required; ``scopes`` a list of scope tokens,
    possibly empty; ``max_ttl`` a duration; ``from`` a non-empty list of target names). Every
    named target must be defined; a target appears at most once. They are compiled into
    ``Policy.derive``. ``max_depth`` is an integer 1..:data:`MAX_DERIVE_DEPTH` and only
    allowed beside ``derive``.
    ``approval`` (a person approves each mint; docs/approvals.md) is a mapping: ``approvers``
    (required, non-empty, each ``group:<name>`` or an email address, stored lower-case, no
    duplicates), ``required`` (1.., at most the number of emails unless a group is listed;
    default 1), ``not_self`` (boolean, default true), ``expires_in`` (a duration, 1m..7d, default
    30m). It needs a ``kind: human-idp`` document and a policy whose issuer is an attestation
    issuer. ``may_act`` (delegation) is ``{issuer, match, subject_tokens}``: ``issuer`` an
    attestation issuer (the actor's), ``match`` as a policy's own ``match`` but judged against
    the actor's claims, ``subject_tokens`` a non-empty list of ``delegation`` / ``id_token``
    (default ``[delegation]``). A policy whose ``issuer`` names the human-idp is a delegation
    policy: it needs ``may_act``, cannot have ``approval``, and its ``match`` names only person
    claims (``email``, ``groups``, ``username``, ``sub``); ``may_act`` on any other policy is an
    error. These cross-document checks run once every file is read.
``kind: client``
    ``secret_sha256`` is 64 hex digits (stored lower-case); ``may`` a non-empty subset of
    ``audit``, ``introspect``, ``revoke``.
``kind: human-idp``
    At most one. ``issuer`` (https; http only for loopback) and ``client_id`` are required; the
    client secret comes from exactly one of ``client_secret_env`` (a variable name) and
    ``client_secret_file`` (relative to the policy file); a ``client_secret`` key is an error
    whose message never repeats the value. ``email_claim`` / ``groups_claim`` /
    ``username_claim`` (claim paths; defaults ``email``, ``groups``, ``preferred_username``),
    ``audience`` (the ``aud`` of ID tokens presented to the API/CLI; default the client id),
    ``algorithms`` (as an issuer's; default RS256, ES256), ``jwks_uri``, ``scopes`` (must include
    ``openid``), ``ci_logins`` (CI login -> email or list of emails, for ``not_self``),
    ``delegation_max_ttl`` (≤ 30d, default 1d), ``leeway``. Its name shares the issuers'
    namespace: policies name either by it.

Digests: a policy's digest is ``"sha256:" + sha256_hex(canonical_json(document))`` over the
document as parsed (so key order and YAML spelling do not matter, values do). The policy set's
digest covers the ordered list of policy digests and the issuer, target and client documents.
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from broker.policy.presets import ASYMMETRIC_ALGORITHMS, PRESETS, Preset
from broker.common.canonical import canonical_json, sha256_hex
from broker.common.durations import parse_duration
from broker.policy.model import (
    DELEGATION_SUBJECT_TOKENS, MAX_DERIVE_DEPTH, ApprovalRule, ClaimMatcher, Client, DeriveRule,
    HumanIdP, IssuerConfig, MayAct, Policy, PolicySet, SourceRef, Target, claim_text,
)
from broker.policy.patterns import compile_exact, compile_glob, compile_regex
from broker.policy.problems import PolicyError, Problem
from broker.policy.source import Located, read_documents, type_name
from broker.policy.targets import COMMON_TARGET_KEYS, TARGET_TYPES, TargetContext

KINDS = ("issuer", "target", "policy", "client", "human-idp")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_PRESET = "oidc"
DEFAULT_LEEWAY = 60
MAX_LEEWAY = 300

ISSUER_REQUIRED = frozenset({"kind", "name", "audience"})
ISSUER_KEYS = ISSUER_REQUIRED | {
    "preset", "issuer", "jwks_uri", "jwks_file", "algorithms", "principal", "run",
    "required_claims", "max_token_age", "leeway", "allow_extra_audiences",
}
TARGET_REQUIRED = frozenset({"kind", "name", "type", "max_ttl"})

# Policy keys beyond the core ones, added by later issues (fan-out: "derive", "max_depth";
# human authorizers: "approval", "may_act"). A key listed here is accepted, checked by its own
# reader below, and stored, as written, in Policy.extra (and covered by the policy's digest).
ALLOWED_EXTRA_POLICY_KEYS: frozenset[str] = frozenset({"derive", "max_depth", "approval", "may_act"})
FUTURE_POLICY_KEYS = ALLOWED_EXTRA_POLICY_KEYS   # the old name, for code written against it
DERIVE_RULE_KEYS = frozenset({"target", "scopes", "max_ttl", "from"})
POLICY_REQUIRED = frozenset({"kind", "name", "issuer", "targets", "match"})
POLICY_KEYS = POLICY_REQUIRED | {"scopes", "max_ttl"}

APPROVAL_KEYS = frozenset({"approvers", "required", "not_self", "expires_in"})
DEFAULT_APPROVAL_EXPIRES_IN = 1800
MAX_APPROVAL_EXPIRES_IN = 7 * 86400
MAY_ACT_KEYS = frozenset({"issuer", "match", "subject_tokens"})
#: What a delegation policy's ``match`` may name: the person, as the human IdP vouches for them.
PERSON_CLAIMS = frozenset({"email", "groups", "username", "sub"})

HUMAN_IDP_REQUIRED = frozenset({"kind", "name", "issuer", "client_id"})
HUMAN_IDP_KEYS = HUMAN_IDP_REQUIRED | {
    "client_secret_env", "client_secret_file", "email_claim", "groups_claim", "username_claim",
    "audience", "algorithms", "jwks_uri", "scopes", "ci_logins", "delegation_max_ttl", "leeway",
}
DEFAULT_HUMAN_ALGORITHMS = ("RS256", "ES256")
DEFAULT_DELEGATION_MAX_TTL = 86400
MAX_DELEGATION_TTL = 30 * 86400

CLIENT_PERMISSIONS = frozenset({"audit", "introspect", "revoke"})
CLIENT_KEYS = frozenset({"kind", "name", "secret_sha256", "may"})

_PATTERN_KEYS = ("glob", "regex")
_CLAIM_PATH = re.compile(r"[^\s{}.]+(?:\.[^\s{}.]+)*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_RUN_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")      # RFC 6749 §3.3 scope-token
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")
_GROUP = re.compile(r"[^\s\x00-\x1f\x7f]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------- public API

def load_policy_dir(path: str | Path) -> PolicySet:
    """Load every ``*.yaml`` / ``*.yml`` file directly in ``path``, in name order."""
    root = Path(path)
    if not root.is_dir():
        reason = "does not exist" if not root.exists() else "is not a directory"
        raise PolicyError([Problem(str(root), 0, f"policy directory {reason}")])
    files = sorted(
        (p for p in root.iterdir()
         if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )
    return load_policy_files(files)


def load_policy_files(paths: Iterable[str | Path]) -> PolicySet:
    """Load the given files in the given order (policies keep that order)."""
    loader = _Loader()
    for raw in paths:
        path = Path(raw)
        file = str(raw)
        loader.files.append(file)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            loader.problems.append(Problem(file, 0, f"cannot read policy file: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError as exc:
            loader.problems.append(Problem(file, 0, f"policy file is not UTF-8: {exc.reason}"))
            continue
        loader.load_text(text, file, path.resolve().parent)
    return loader.finish()


def load_policy_text(text: str, filename: str = "<string>", *,
                     base_dir: str | Path | None = None) -> PolicySet:
    """Load policy documents from a string. ``jwks_file`` paths are relative to ``base_dir``
    (default: the folder of ``filename``, or the working directory for ``<string>``)."""
    loader = _Loader()
    loader.files.append(filename)
    if base_dir is None:
        base_dir = Path.cwd() if filename.startswith("<") else Path(filename).resolve().parent
    loader.load_text(text, filename, Path(base_dir))
    return loader.finish()


def check_policy_dir(path: str | Path) -> list[Problem]:
    """Every problem of the policy directory (empty when it loads); for ``broker policy check``."""
    try:
        load_policy_dir(path)
    except PolicyError as exc:
        return exc.problems
    return []


# ---------------------------------------------------------------------------- loading

class _Loader:
    """Accumulates documents and problems over all files; :meth:`finish` builds the set."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.problems: list[Problem] = []
        self.declared: dict[str, dict[str, SourceRef]] = {kind: {} for kind in KINDS}
        self.documents: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS if kind != "policy"}
        self.issuers: dict[str, IssuerConfig] = {}
        self.targets: dict[str, Target] = {}
        self.audiences: dict[str, tuple[str, SourceRef]] = {}
        self.policies: list[Policy] = []
        self.clients: dict[str, Client] = {}
        self.human_idp: HumanIdP | None = None
        self.references: list[tuple[_Doc, str, Located]] = []   # (policy doc, kind, name node)
        self.policy_checks: list[tuple[_Doc, Policy]] = []      # cross-document checks in finish()

    def load_text(self, text: str, file: str, base_dir: Path) -> None:
        def report(line: int, message: str) -> None:
            self.problems.append(Problem(file, line, message))

        for node in read_documents(text, report):
            self._document(node, file, base_dir)

    def _document(self, node: Located, file: str, base_dir: Path) -> None:
        if not node.is_mapping:
            self.problems.append(Problem(
                file, node.line, f"a policy document must be a mapping with a 'kind', got {type_name(node.data)}"))
            return
        kind_node = node.get("kind")
        if kind_node is None:
            self.problems.append(Problem(
                file, node.line, f"document has no 'kind' (one of: {', '.join(KINDS)})"))
            return
        kind = kind_node.data
        if kind_node.reported:
            return
        if kind not in KINDS:
            shown = repr(kind) if isinstance(kind, str) else type_name(kind)
            self.problems.append(Problem(
                file, kind_node.line, f"unknown kind {shown} (one of: {', '.join(KINDS)})"))
            return
        doc = _Doc(self, file, base_dir, node, kind)
        doc.read_name()
        if kind == "issuer":
            _compile_issuer(doc)
        elif kind == "target":
            _compile_target(doc)
        elif kind == "policy":
            _compile_policy(doc)
        elif kind == "human-idp":
            _compile_human_idp(doc)
        else:
            _compile_client(doc)

    def finish(self) -> PolicySet:
        for doc, kind, ref in self.references:
            if kind == "policy-issuer":     # a policy's `issuer`: an issuer, or the human IdP
                known = {**self.declared["issuer"], **self.declared["human-idp"]}
                listing = ", ".join([*sorted(self.declared["issuer"]),
                                     *(f"{n} (human-idp)" for n in sorted(self.declared["human-idp"]))])
                kind = "issuer"
            else:
                known = self.declared[kind]
                listing = ", ".join(sorted(known))
            if ref.data not in known:
                doc.error(ref.line, f"unknown {kind} {ref.data!r} (defined {kind}s: {listing or 'none'})")
        for name, ref in self.declared["human-idp"].items():
            if name in self.declared["issuer"]:
                self.problems.append(Problem(ref.file, ref.line, (
                    f"human-idp {name!r}: the name is already used by issuer {name!r} "
                    f"({self.declared['issuer'][name]}); policies name either by it")))
        for doc, policy in self.policy_checks:
            _check_policy_issuer_kind(doc, policy, self)
        if self.problems:
            order = {file: i for i, file in enumerate(self.files)}
            raise PolicyError(sorted(self.problems, key=lambda p: (order.get(p.file, -1), p.line)))
        digest_input = {
            "policies": [p.digest for p in self.policies],
            "issuers": self.documents["issuer"],
            "targets": self.documents["target"],
            "clients": self.documents["client"],
        }
        if self.documents["human-idp"]:     # absent when there is none: digests stay as they were
            digest_input["human_idps"] = self.documents["human-idp"]
        return PolicySet(
            issuers=dict(self.issuers),
            targets=dict(self.targets),
            policies=tuple(self.policies),
            clients=dict(self.clients),
            digest=_digest(digest_input),
            human_idp=self.human_idp,
        )


def _digest(document: Any) -> str:
    return "sha256:" + sha256_hex(canonical_json(document))


class _Doc:
    """One document being compiled: typed field readers that report ``file:line`` problems."""

    def __init__(self, loader: _Loader, file: str, base_dir: Path, node: Located, kind: str) -> None:
        self.loader = loader
        self.file = file
        self.base_dir = base_dir
        self.node = node
        self.kind = kind
        self.name: str | None = None
        self.ok = True

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.file, self.node.line)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else f"{self.kind} document"

    def error(self, line: int, message: str) -> None:
        self.ok = False
        self.loader.problems.append(Problem(self.file, line, f"{self.label}: {message}"))

    def quiet(self, node: Located) -> bool:
        """True when reading ``node`` already reported a problem (an alias, a refused tag...):
        the document is bad, but a second message about the same value would be noise."""
        if node.reported:
            self.ok = False
        return node.reported

    def read_name(self) -> None:
        node = self.node.get("name")
        if node is None:
            return                      # reported by check_keys as a missing required key
        if self.quiet(node):
            return
        if not isinstance(node.data, str) or not NAME_RE.fullmatch(node.data):
            shown = repr(node.data) if isinstance(node.data, str) else type_name(node.data)
            self.error(node.line, f"name must be 1-128 letters, digits, '.', '_' or '-' "
                                  f"starting with a letter or digit, got {shown}")
            return
        self.name = node.data
        declared = self.loader.declared[self.kind]
        if self.name in declared:
            self.error(node.line, f"duplicate {self.kind} name {self.name!r} "
                                  f"(first defined at {declared[self.name]})")
            return
        declared[self.name] = SourceRef(self.file, node.line)

    def check_keys(self, required: Iterable[str], allowed: Iterable[str]) -> None:
        allowed = frozenset(allowed)
        assert self.node.items is not None
        for key, (line, _) in self.node.items.items():
            if key not in allowed:
                self.error(line, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required):
            if key not in self.node.items:
                self.error(self.node.line, f"missing required key {key!r}")

    # --- typed readers; each returns None (and reports) when the value is unusable ----------

    def string(self, key: str) -> str | None:
        node = self.node.get(key)
        if node is None or self.quiet(node):
            return None
        if not isinstance(node.data, str) or not node.data.strip():
            got = "an empty string" if isinstance(node.data, str) else type_name(node.data)
            self.error(node.line, f"{key} must be a non-empty string, got {got}")
            return None
        return node.data

    def string_list(self, key: str, *, allow_empty: bool = False) -> list[Located] | None:
        """The elements of a list of non-empty strings (duplicates reported)."""
        node = self.node.get(key)
        if node is None or self.quiet(node):
            return None
        if not node.is_list:
            self.error(node.line, f"{key} must be a list of strings, got {type_name(node.data)}")
            return None
        assert node.elements is not None
        if not node.elements and not allow_empty:
            self.error(node.line, f"{key} must not be empty")
            return None
        good: list[Located] = []
        seen: set[str] = set()
        for element in node.elements:
            if self.quiet(element):
                continue
            if not isinstance(element.data, str) or not element.data.strip():
                got = "an empty string" if isinstance(element.data, str) else type_name(element.data)
                self.error(element.line, f"{key} must be a list of non-empty strings, got {got}")
            elif element.data in seen:
                self.error(element.line, f"{key} lists {element.data!r} twice")
            else:
                seen.add(element.data)
                good.append(element)
        return good if len(good) == len(node.elements) else None

    def duration(self, key: str) -> int | None:
        node = self.node.get(key)
        if node is None or self.quiet(node):
            return None
        try:
            return parse_duration(node.data)
        except ValueError as exc:
            self.error(node.line, f"{key}: {exc}")
            return None

    def url(self, key: str, *, allow_query: bool) -> str | None:
        value = self.string(key)
        if value is None:
            return None
        problem = _url_problem(value, allow_query=allow_query)
        if problem:
            self.error(self.node.get(key).line, f"{key} {problem}")   # type: ignore[union-attr]
            return None
        return value


def _url_problem(value: str, *, allow_query: bool) -> str | None:
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


def _claim_path_ok(path: Any) -> bool:
    return isinstance(path, str) and _CLAIM_PATH.fullmatch(path) is not None


def _template_problem(template: str) -> str | None:
    placeholders = _PLACEHOLDER.findall(template)
    rest = _PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        return f"has an unbalanced '{{' or '}}': {template!r}"
    if not placeholders:
        return f"must contain at least one {{claim}} placeholder: {template!r}"
    for placeholder in placeholders:
        if not _claim_path_ok(placeholder):
            return f"has a malformed placeholder {{{placeholder}}} (want a claim name or dotted path)"
    return None


# ---------------------------------------------------------------------------- kind: issuer

def _compile_issuer(doc: _Doc) -> None:
    doc.check_keys(ISSUER_REQUIRED, ISSUER_KEYS)
    node = doc.node

    preset: Preset | None = None
    preset_name = DEFAULT_PRESET
    if node.get("preset") is not None:
        given = doc.string("preset")
        if given is not None and given not in PRESETS:
            doc.error(node.get("preset").line,  # type: ignore[union-attr]
                      f"unknown preset {given!r} (one of: {', '.join(sorted(PRESETS))})")
        elif given is not None:
            preset_name = given
            preset = PRESETS[given]
    else:
        preset = PRESETS[DEFAULT_PRESET]

    issuer_url = doc.url("issuer", allow_query=False)
    if node.get("issuer") is None and preset is not None:
        if preset.issuer is None:
            doc.error(node.line, f"missing required key 'issuer' (preset {preset_name!r} has no default issuer)")
        else:
            issuer_url = preset.issuer

    audience = doc.string("audience")
    jwks_uri = doc.url("jwks_uri", allow_query=True)
    jwks_file = _jwks_file(doc)
    if node.get("jwks_uri") is not None and node.get("jwks_file") is not None:
        doc.error(node.key_line("jwks_file"), "give at most one of 'jwks_uri' and 'jwks_file'")

    algorithms = _algorithms(doc, preset)
    principal = preset.principal if preset else ""
    if node.get("principal") is not None:
        given = doc.string("principal")
        if given is not None:
            problem = _template_problem(given)
            if problem:
                doc.error(node.get("principal").line, f"principal {problem}")  # type: ignore[union-attr]
            else:
                principal = given
    run = _run_map(doc, preset)
    required_claims = _required_claims(doc, preset)
    max_token_age = doc.duration("max_token_age")
    leeway = _leeway(doc)
    allow_extra_audiences = False
    extra_node = node.get("allow_extra_audiences")
    if extra_node is not None and not doc.quiet(extra_node):
        if isinstance(extra_node.data, bool):
            allow_extra_audiences = extra_node.data
        else:
            doc.error(extra_node.line, f"allow_extra_audiences must be true or false, got "
                                       f"{type_name(extra_node.data)}")

    if not doc.ok or doc.name is None or preset is None:
        return
    assert issuer_url is not None and audience is not None and algorithms is not None
    assert run is not None and required_claims is not None
    doc.loader.documents["issuer"][doc.name] = node.data
    doc.loader.issuers[doc.name] = IssuerConfig(
        name=doc.name,
        preset=preset.name,
        issuer=issuer_url,
        audience=audience,
        algorithms=algorithms,
        principal=principal,
        run=run,
        required_claims=required_claims,
        jwks_uri=jwks_uri,
        jwks_file=jwks_file,
        max_token_age=max_token_age,
        leeway=leeway,
        allow_extra_audiences=allow_extra_audiences,
        source=doc.source,
    )


def _jwks_file(doc: _Doc) -> str | None:
    value = doc.string("jwks_file")
    if value is None:
        return None
    line = doc.node.get("jwks_file").line  # type: ignore[union-attr]
    path = Path(value)
    if not path.is_absolute():
        path = doc.base_dir / path
    path = path.resolve()
    if not path.is_file():
        doc.error(line, f"jwks_file {value!r} does not exist (looked for {path})")
        return None
    try:
        key_set = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        doc.error(line, f"jwks_file {value!r} is not a readable JSON key set ({type(exc).__name__})")
        return None
    if not isinstance(key_set, dict) or not isinstance(key_set.get("keys"), list):
        doc.error(line, f"jwks_file {value!r} is not a JSON key set (want an object with a 'keys' list)")
        return None
    return str(path)


def _algorithms(doc: _Doc, preset: Preset | None) -> tuple[str, ...] | None:
    node = doc.node.get("algorithms")
    if node is None:
        return preset.algorithms if preset else None
    if doc.quiet(node):
        return None
    if not node.is_list or not node.elements:
        got = "an empty list" if node.is_list else type_name(node.data)
        doc.error(node.line, f"algorithms must be a non-empty list of algorithm names, got {got}")
        return None
    allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
    result: list[str] = []
    bad = False
    for element in node.elements:
        alg = element.data
        if doc.quiet(element):
            pass
        elif not isinstance(alg, str):
            doc.error(element.line, f"algorithms must be strings, got {type_name(alg)}")
        elif alg.lower() == "none":
            doc.error(element.line, "algorithm 'none' is never allowed: an unsigned token proves nothing")
        elif alg.upper().startswith("HS"):
            doc.error(element.line, f"algorithm {alg!r} is not allowed: HMAC uses a shared secret, "
                                    f"which cannot prove which workload signed")
        elif alg not in ASYMMETRIC_ALGORITHMS:
            doc.error(element.line, f"unknown algorithm {alg!r} (allowed: {allowed})")
        else:
            if alg not in result:
                result.append(alg)
            continue
        bad = True
    return None if bad else tuple(result)


def _run_map(doc: _Doc, preset: Preset | None) -> dict[str, str] | None:
    run = dict(preset.run) if preset else {}
    node = doc.node.get("run")
    if node is None:
        return run
    if doc.quiet(node):
        return None
    if not node.is_mapping:
        doc.error(node.line, f"run must be a mapping of run field -> claim, got {type_name(node.data)}")
        return None
    assert node.items is not None
    ok = True
    for field, (key_line, value) in node.items.items():
        if not _RUN_FIELD.fullmatch(field):
            doc.error(key_line, f"run field {field!r} must be a letter or '_' then letters, digits or '_'")
            ok = False
        elif doc.quiet(value):
            ok = False
        elif value.data is None:
            if preset is not None and field not in run:
                doc.error(value.line, f"run field {field!r} is null but preset {preset.name!r} "
                                      f"has no such field to remove")
                ok = False
            run.pop(field, None)
        elif not _claim_path_ok(value.data):
            got = repr(value.data) if isinstance(value.data, str) else type_name(value.data)
            doc.error(value.line, f"run.{field} must be a claim name or dotted path (or null to "
                                  f"remove the preset's field), got {got}")
            ok = False
        else:
            run[field] = value.data
    return run if ok else None


def _required_claims(doc: _Doc, preset: Preset | None) -> tuple[str, ...] | None:
    claims = list(preset.required_claims) if preset else []
    elements = doc.string_list("required_claims", allow_empty=True)
    if doc.node.get("required_claims") is not None and elements is None:
        return None
    ok = True
    for element in elements or ():
        if not _claim_path_ok(element.data):
            doc.error(element.line, f"required_claims: {element.data!r} is not a claim name or dotted path")
            ok = False
        elif element.data not in claims:
            claims.append(element.data)
    return tuple(claims) if ok else None


def _leeway(doc: _Doc) -> int:
    node = doc.node.get("leeway")
    if node is None or doc.quiet(node):
        return DEFAULT_LEEWAY
    value = node.data
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LEEWAY:
        shown = repr(value) if isinstance(value, int) and not isinstance(value, bool) else type_name(value)
        doc.error(node.line, f"leeway must be whole seconds from 0 to {MAX_LEEWAY}, got {shown}")
        return DEFAULT_LEEWAY
    return value


# ---------------------------------------------------------------------------- kind: target

def _compile_target(doc: _Doc) -> None:
    node = doc.node
    type_node = node.get("type")
    schema = None
    if type_node is not None:
        type_name_ = doc.string("type")
        if type_name_ is not None:
            schema = TARGET_TYPES.get(type_name_)
            if schema is None:
                doc.error(type_node.line, f"unknown target type {type_name_!r} "
                                          f"(one of: {', '.join(sorted(TARGET_TYPES))})")
    if schema is not None:
        doc.check_keys(TARGET_REQUIRED | schema.required_keys, COMMON_TARGET_KEYS | schema.allowed_keys)
    else:   # without a known type, the type's own keys cannot be judged: only the common ones
        doc.check_keys(TARGET_REQUIRED, set(node.items or ()))

    audience = doc.name
    if node.get("audience") is not None:
        audience = doc.string("audience")
    max_ttl = doc.duration("max_ttl")

    options: dict[str, Any] = {}
    if schema is not None and doc.name is not None:
        nodes = {key: node.get(key) for key in schema.allowed_keys if node.get(key) is not None}
        options = {key: value.data for key, value in nodes.items()}  # type: ignore[union-attr]
        ctx = TargetContext(name=doc.name, type=schema.name, options=options, file=doc.file,
                            line=node.line, base_dir=doc.base_dir, nodes=nodes)  # type: ignore[arg-type]
        for problem in schema.validate(ctx) or ():
            doc.ok = False
            doc.loader.problems.append(problem)
        options = ctx.options

    if audience is not None and doc.name is not None:
        line = node.get("audience").line if node.get("audience") is not None else node.line  # type: ignore[union-attr]
        other = doc.loader.audiences.get(audience)
        if other is not None:
            doc.error(line, f"audience {audience!r} is already the audience of target "
                            f"{other[0]!r} ({other[1]})")
        else:
            doc.loader.audiences[audience] = (doc.name, SourceRef(doc.file, line))

    if not doc.ok or schema is None or doc.name is None:
        return
    assert audience is not None and max_ttl is not None
    doc.loader.documents["target"][doc.name] = node.data
    doc.loader.targets[doc.name] = Target(
        name=doc.name, type=schema.name, audience=audience, max_ttl=max_ttl,
        options=options, source=doc.source,
    )


# ---------------------------------------------------------------------------- kind: policy

def _compile_policy(doc: _Doc) -> None:
    allowed = POLICY_KEYS | ALLOWED_EXTRA_POLICY_KEYS
    doc.check_keys(POLICY_REQUIRED, allowed)
    node = doc.node

    issuer = doc.string("issuer")
    if issuer is not None:
        doc.loader.references.append((doc, "policy-issuer", node.get("issuer")))  # type: ignore[arg-type]
    target_nodes = doc.string_list("targets")
    for element in target_nodes or ():
        doc.loader.references.append((doc, "target", element))
    match = _match(doc)
    scopes: tuple[str, ...] | None = None
    scope_nodes = doc.string_list("scopes", allow_empty=True)
    for element in scope_nodes or ():
        if not _SCOPE.fullmatch(element.data):
            doc.error(element.line, f"scope {element.data!r} must not contain spaces, '\"' or '\\'")
    if scope_nodes is not None:
        scopes = tuple(e.data for e in scope_nodes)
    max_ttl = doc.duration("max_ttl")
    extra = {key: node.get(key).data for key in ALLOWED_EXTRA_POLICY_KEYS if node.get(key) is not None}  # type: ignore[union-attr]
    derive = _derive_rules(doc) if "derive" in ALLOWED_EXTRA_POLICY_KEYS else ()
    max_depth = _max_depth(doc) if "max_depth" in ALLOWED_EXTRA_POLICY_KEYS else None
    approval = _approval(doc) if "approval" in ALLOWED_EXTRA_POLICY_KEYS else None
    may_act = _may_act(doc) if "may_act" in ALLOWED_EXTRA_POLICY_KEYS else None

    if not doc.ok or doc.name is None:
        return
    assert issuer is not None and target_nodes is not None and match is not None
    policy = Policy(
        name=doc.name,
        issuer=issuer,
        targets=tuple(e.data for e in target_nodes),
        match=match,
        scopes=scopes,
        max_ttl=max_ttl,
        digest=_digest(node.data),
        extra=extra,
        source=doc.source,
        derive=derive or (),
        max_depth=max_depth,
        approval=approval,
        may_act=may_act,
    )
    doc.loader.policies.append(policy)
    doc.loader.policy_checks.append((doc, policy))


def _derive_rules(doc: _Doc) -> tuple[DeriveRule, ...] | None:
    """``derive``: which targets credentials authorized by this policy may derive (fan-out)."""
    node = doc.node.get("derive")
    if node is None:
        return ()
    if doc.quiet(node):
        return None
    if not node.is_list or not node.elements:
        got = "an empty list" if node.is_list else type_name(node.data)
        doc.error(node.line, f"derive must be a non-empty list of target names or "
                             f"{{target, scopes, max_ttl, from}} mappings, got {got}")
        return None
    rules: list[DeriveRule] = []
    seen: dict[str, int] = {}
    ok = True
    for element in node.elements:
        rule = None if doc.quiet(element) else _derive_rule(doc, element)
        if rule is None:
            ok = False
            continue
        if rule.target in seen:
            doc.error(element.line, f"derive lists target {rule.target!r} twice (first at line "
                                    f"{seen[rule.target]}); use 'from' in one entry instead")
            ok = False
            continue
        seen[rule.target] = element.line
        rules.append(rule)
    return tuple(rules) if ok else None


def _derive_rule(doc: _Doc, element: Located) -> DeriveRule | None:
    if isinstance(element.data, str):
        target_node: Located | None = element
        fields: dict[str, tuple[int, Located]] = {}
    elif element.is_mapping:
        assert element.items is not None
        fields = element.items
        ok = True
        for key, (line, _) in fields.items():
            if key not in DERIVE_RULE_KEYS:
                doc.error(line, f"derive: unknown key {key!r} (allowed: "
                                f"{', '.join(sorted(DERIVE_RULE_KEYS))})")
                ok = False
        target_node = element.get("target")
        if target_node is None:
            doc.error(element.line, "derive: an entry mapping needs 'target'")
            return None
        if not ok:
            return None
    else:
        doc.error(element.line, f"derive: an entry is a target name or a mapping with 'target', "
                                f"got {type_name(element.data)}")
        return None
    if doc.quiet(target_node):
        return None
    if not isinstance(target_node.data, str) or not target_node.data.strip():
        doc.error(target_node.line, f"derive: target must be a target name, got "
                                    f"{type_name(target_node.data)}")
        return None
    doc.loader.references.append((doc, "target", target_node))
    ok = True
    scopes: tuple[str, ...] | None = None
    if "scopes" in fields:
        scopes = _derive_names(doc, fields["scopes"][1], "scopes", allow_empty=True)
        for scope in scopes or ():
            if not _SCOPE.fullmatch(scope):
                doc.error(fields["scopes"][1].line,
                          f"derive: scope {scope!r} must not contain spaces, '\"' or '\\'")
                ok = False
        ok = ok and scopes is not None
    max_ttl: int | None = None
    if "max_ttl" in fields:
        ttl_node = fields["max_ttl"][1]
        if not doc.quiet(ttl_node):
            try:
                max_ttl = parse_duration(ttl_node.data)
            except ValueError as exc:
                doc.error(ttl_node.line, f"derive: max_ttl: {exc}")
        ok = ok and max_ttl is not None
    from_targets: tuple[str, ...] | None = None
    if "from" in fields:
        from_node = fields["from"][1]
        from_targets = _derive_names(doc, from_node, "from", allow_empty=False)
        if from_targets is not None:
            assert from_node.elements is not None
            for ref in from_node.elements:
                doc.loader.references.append((doc, "target", ref))
        ok = ok and from_targets is not None
    if not ok:
        return None
    return DeriveRule(target=target_node.data, scopes=scopes, max_ttl=max_ttl,
                      from_targets=from_targets)


def _derive_names(doc: _Doc, node: Located, key: str, *, allow_empty: bool) -> tuple[str, ...] | None:
    """A list of distinct non-empty strings inside a ``derive`` entry."""
    if doc.quiet(node):
        return None
    if not node.is_list or (not node.elements and not allow_empty):
        got = "an empty list" if node.is_list else type_name(node.data)
        doc.error(node.line, f"derive: {key} must be a {'' if allow_empty else 'non-empty '}"
                             f"list of strings, got {got}")
        return None
    assert node.elements is not None
    names: list[str] = []
    for element in node.elements:
        if doc.quiet(element):
            return None
        if not isinstance(element.data, str) or not element.data.strip():
            got = "an empty string" if isinstance(element.data, str) else type_name(element.data)
            doc.error(element.line, f"derive: {key} must be a list of non-empty strings, got {got}")
            return None
        if element.data in names:
            doc.error(element.line, f"derive: {key} lists {element.data!r} twice")
            return None
        names.append(element.data)
    return tuple(names)


def _max_depth(doc: _Doc) -> int | None:
    node = doc.node.get("max_depth")
    if node is None or doc.quiet(node):
        return None
    value = node.data
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DERIVE_DEPTH:
        shown = repr(value) if isinstance(value, int) and not isinstance(value, bool) else type_name(value)
        doc.error(node.line, f"max_depth must be a whole number from 1 to {MAX_DERIVE_DEPTH}, "
                             f"got {shown}")
        return None
    if doc.node.get("derive") is None:
        doc.error(node.line, "max_depth has no effect without derive")
        return None
    return value


def _approval(doc: _Doc) -> ApprovalRule | None:
    """``approval``: approvers (``group:<name>`` or an email), required, not_self, expires_in."""
    node = doc.node.get("approval")
    if node is None or doc.quiet(node):
        return None
    if not node.is_mapping:
        doc.error(node.line, f"approval must be a mapping with 'approvers', got {type_name(node.data)}")
        return None
    assert node.items is not None
    ok = True
    for key, (line, _) in node.items.items():
        if key not in APPROVAL_KEYS:
            doc.error(line, f"approval: unknown key {key!r} (allowed: {', '.join(sorted(APPROVAL_KEYS))})")
            ok = False
    approvers_node = node.get("approvers")
    emails: list[str] = []
    groups: list[str] = []
    if approvers_node is None:
        doc.error(node.line, "approval: missing required key 'approvers'")
        ok = False
    elif doc.quiet(approvers_node):
        ok = False
    elif not approvers_node.is_list or not approvers_node.elements:
        got = "an empty list" if approvers_node.is_list else type_name(approvers_node.data)
        doc.error(approvers_node.line, f"approval: approvers must be a non-empty list of "
                                       f"'group:<name>' or email addresses, got {got}")
        ok = False
    else:
        for element in approvers_node.elements:
            value = element.data
            if doc.quiet(element):
                ok = False
            elif not isinstance(value, str) or not value.strip():
                got = "an empty string" if isinstance(value, str) else type_name(value)
                doc.error(element.line, f"approval: an approver is 'group:<name>' or an email "
                                        f"address, got {got}")
                ok = False
            elif value.startswith("group:"):
                group = value[len("group:"):]
                if not _GROUP.fullmatch(group):
                    doc.error(element.line, f"approval: group name in {value!r} must be non-empty, "
                                            f"without spaces")
                    ok = False
                elif group in groups:
                    doc.error(element.line, f"approval: approvers lists {value!r} twice")
                    ok = False
                else:
                    groups.append(group)
            elif _EMAIL.fullmatch(value):
                if value.lower() in emails:
                    doc.error(element.line, f"approval: approvers lists {value!r} twice")
                    ok = False
                else:
                    emails.append(value.lower())
            else:
                doc.error(element.line, f"approval: an approver is 'group:<name>' or an email "
                                        f"address, got {value!r}")
                ok = False
    required = 1
    required_node = node.get("required")
    if required_node is not None and not doc.quiet(required_node):
        value = required_node.data
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            shown = repr(value) if isinstance(value, int) and not isinstance(value, bool) else type_name(value)
            doc.error(required_node.line, f"approval: required must be a whole number of "
                                          f"approvers, at least 1, got {shown}")
            ok = False
        elif not groups and emails and value > len(emails):
            doc.error(required_node.line, f"approval: required is {value} but only {len(emails)} "
                                          f"approver{'s are' if len(emails) != 1 else ' is'} listed")
            ok = False
        else:
            required = value
    elif required_node is not None:
        ok = False
    not_self = True
    not_self_node = node.get("not_self")
    if not_self_node is not None and not doc.quiet(not_self_node):
        if not isinstance(not_self_node.data, bool):
            doc.error(not_self_node.line, f"approval: not_self must be true or false, got "
                                          f"{type_name(not_self_node.data)}")
            ok = False
        else:
            not_self = not_self_node.data
    elif not_self_node is not None:
        ok = False
    expires_in = DEFAULT_APPROVAL_EXPIRES_IN
    expires_node = node.get("expires_in")
    if expires_node is not None and not doc.quiet(expires_node):
        try:
            expires_in = parse_duration(expires_node.data)
        except ValueError as exc:
            doc.error(expires_node.line, f"approval: expires_in: {exc}")
            ok = False
        else:
            if expires_in < 60 or expires_in > MAX_APPROVAL_EXPIRES_IN:
                doc.error(expires_node.line, "approval: expires_in must be from 1m to 7d")
                ok = False
    elif expires_node is not None:
        ok = False
    if not ok:
        return None
    return ApprovalRule(emails=tuple(emails), groups=tuple(groups), required=required,
                        not_self=not_self, expires_in=expires_in)


def _may_act(doc: _Doc) -> MayAct | None:
    """``may_act``: ``{issuer, match, subject_tokens}`` — the agents that may act for the person."""
    node = doc.node.get("may_act")
    if node is None or doc.quiet(node):
        return None
    if not node.is_mapping:
        doc.error(node.line, f"may_act must be a mapping {{issuer, match, subject_tokens}}, got "
                             f"{type_name(node.data)}")
        return None
    assert node.items is not None
    ok = True
    for key, (line, _) in node.items.items():
        if key not in MAY_ACT_KEYS:
            doc.error(line, f"may_act: unknown key {key!r} (allowed: {', '.join(sorted(MAY_ACT_KEYS))})")
            ok = False
    issuer_node = node.get("issuer")
    issuer: str | None = None
    if issuer_node is None:
        doc.error(node.line, "may_act: missing required key 'issuer' (the actor's attestation issuer)")
        ok = False
    elif not doc.quiet(issuer_node):
        if not isinstance(issuer_node.data, str) or not issuer_node.data.strip():
            doc.error(issuer_node.line, f"may_act: issuer must be an issuer name, got "
                                        f"{type_name(issuer_node.data)}")
            ok = False
        else:
            issuer = issuer_node.data
            doc.loader.references.append((doc, "issuer", issuer_node))
    else:
        ok = False
    match_node = node.get("match")
    match = None
    if match_node is None:
        doc.error(node.line, "may_act: missing required key 'match' (claims of the actor's attestation)")
        ok = False
    else:
        match = _match(doc, match_node, prefix="may_act.match")
        ok = ok and match is not None
    subject_tokens: tuple[str, ...] = ("delegation",)
    tokens_node = node.get("subject_tokens")
    if tokens_node is not None:
        if doc.quiet(tokens_node):
            ok = False
        elif not tokens_node.is_list or not tokens_node.elements:
            got = "an empty list" if tokens_node.is_list else type_name(tokens_node.data)
            doc.error(tokens_node.line, f"may_act: subject_tokens must be a non-empty list of "
                                        f"{', '.join(DELEGATION_SUBJECT_TOKENS)}, got {got}")
            ok = False
        else:
            chosen: list[str] = []
            for element in tokens_node.elements:
                if element.data not in DELEGATION_SUBJECT_TOKENS or element.data in chosen:
                    shown = repr(element.data) if isinstance(element.data, str) else type_name(element.data)
                    doc.error(element.line, f"may_act: subject_tokens entries are "
                                            f"{' or '.join(DELEGATION_SUBJECT_TOKENS)}, each once, got {shown}")
                    ok = False
                else:
                    chosen.append(element.data)
            subject_tokens = tuple(chosen)
    if not ok:
        return None
    assert issuer is not None and match is not None
    return MayAct(issuer=issuer, match=match, subject_tokens=subject_tokens)


def _check_policy_issuer_kind(doc: _Doc, policy: Policy, loader: _Loader) -> None:
    """Checks that need every document: what kind of issuer the policy names decides which of
    ``approval`` and ``may_act`` it may have (docs/approvals.md)."""
    human = policy.issuer in loader.declared["human-idp"]
    node = doc.node
    if human:
        if policy.may_act is None:
            doc.error(node.key_line("issuer"), f"issuer {policy.issuer!r} is the human-idp: such a "
                                               f"policy is for delegation and needs 'may_act'")
        if policy.approval is not None:
            doc.error(node.key_line("approval"), "approval cannot be combined with a human-idp "
                                                 "issuer: the person in the subject token authorizes")
        for matcher in policy.match:
            if matcher.claim not in PERSON_CLAIMS:
                doc.error(node.key_line("match"), f"match: {matcher.claim!r} is not a person claim "
                                                  f"(one of: {', '.join(sorted(PERSON_CLAIMS))}) for a "
                                                  f"policy whose issuer is the human-idp")
    elif policy.issuer in loader.declared["issuer"]:
        if policy.may_act is not None:
            doc.error(node.key_line("may_act"), "may_act needs a policy whose issuer is the "
                                                "human-idp (the person the agent acts for)")
    if policy.approval is not None and not loader.declared["human-idp"]:
        doc.error(node.key_line("approval"), "approval needs a 'kind: human-idp' document (who "
                                             "the approvers are)")


# ---------------------------------------------------------------------------- kind: human-idp

def _compile_human_idp(doc: _Doc) -> None:
    node = doc.node
    assert node.items is not None
    if "client_secret" in node.items:
        # never echo the value: it is a secret someone pasted into a policy file
        doc.error(node.key_line("client_secret"), "client_secret must never be written in a "
                                                  "policy file: use client_secret_env or "
                                                  "client_secret_file")
        allowed = HUMAN_IDP_KEYS | {"client_secret"}
    else:
        allowed = HUMAN_IDP_KEYS
    doc.check_keys(HUMAN_IDP_REQUIRED, allowed)
    if doc.loader.human_idp is not None or (
            doc.name is not None and len(doc.loader.declared["human-idp"]) > 1):
        first = next(iter(doc.loader.declared["human-idp"].values()))
        doc.error(node.line, f"only one human-idp document is allowed (the first is at {first})")
    issuer = doc.url("issuer", allow_query=False)
    client_id = doc.string("client_id")
    secret_env = doc.string("client_secret_env")
    if secret_env is not None and not _ENV_NAME.fullmatch(secret_env):
        doc.error(node.key_line("client_secret_env"), "client_secret_env must be an environment "
                                                      "variable name")
    secret_file = doc.string("client_secret_file")
    if secret_file is not None:
        path = Path(secret_file)
        secret_file = str((path if path.is_absolute() else doc.base_dir / path).resolve())
    given = [k for k in ("client_secret_env", "client_secret_file") if k in node.items]
    if len(given) != 1 and "client_secret" not in node.items:
        doc.error(node.line, "give exactly one of 'client_secret_env' and 'client_secret_file'")
    claims: dict[str, str] = {}
    for key, default in (("email_claim", "email"), ("groups_claim", "groups"),
                         ("username_claim", "preferred_username")):
        claims[key] = default
        if key in node.items:
            value = doc.string(key)
            if value is not None and not _claim_path_ok(value):
                doc.error(node.key_line(key), f"{key} must be a claim name or dotted path")
            elif value is not None:
                claims[key] = value
    audience = doc.string("audience") if "audience" in node.items else None
    algorithms = _algorithms(doc, None) if "algorithms" in node.items else DEFAULT_HUMAN_ALGORITHMS
    jwks_uri = doc.url("jwks_uri", allow_query=True)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    if "scopes" in node.items:
        elements = doc.string_list("scopes")
        if elements is not None:
            scopes = tuple(e.data for e in elements)
            if "openid" not in scopes:
                doc.error(node.key_line("scopes"), "scopes must include 'openid'")
            for element in elements:
                if not _SCOPE.fullmatch(element.data):
                    doc.error(element.line, f"scope {element.data!r} must not contain spaces, '\"' or '\\'")
    ci_logins = _ci_logins(doc)
    delegation_max_ttl = DEFAULT_DELEGATION_MAX_TTL
    if "delegation_max_ttl" in node.items:
        value = doc.duration("delegation_max_ttl")
        if value is not None and value > MAX_DELEGATION_TTL:
            doc.error(node.key_line("delegation_max_ttl"), "delegation_max_ttl must be at most 30d")
        elif value is not None:
            delegation_max_ttl = value
    leeway = _leeway(doc)

    if not doc.ok or doc.name is None:
        return
    assert issuer is not None and client_id is not None and algorithms is not None
    assert ci_logins is not None
    doc.loader.documents["human-idp"][doc.name] = node.data
    doc.loader.human_idp = HumanIdP(
        name=doc.name, issuer=issuer, client_id=client_id, client_secret_env=secret_env,
        client_secret_file=secret_file, email_claim=claims["email_claim"],
        groups_claim=claims["groups_claim"], username_claim=claims["username_claim"],
        audience=audience, algorithms=algorithms, jwks_uri=jwks_uri, scopes=scopes,
        ci_logins=ci_logins, delegation_max_ttl=delegation_max_ttl, leeway=leeway,
        source=doc.source)


def _ci_logins(doc: _Doc) -> dict[str, tuple[str, ...]] | None:
    """``ci_logins``: a run's ``actor`` (CI login) -> the email(s) of the same person, for
    ``not_self``. Keys are compared case-insensitively (stored lower-case)."""
    node = doc.node.get("ci_logins")
    if node is None:
        return {}
    if doc.quiet(node):
        return None
    if not node.is_mapping:
        doc.error(node.line, f"ci_logins must be a mapping of CI login -> email (or list of "
                             f"emails), got {type_name(node.data)}")
        return None
    assert node.items is not None
    result: dict[str, tuple[str, ...]] = {}
    ok = True
    for login, (line, value) in node.items.items():
        values = value.elements if value.is_list else [value]
        emails = []
        for element in values or ():
            if doc.quiet(element):
                ok = False
            elif not isinstance(element.data, str) or not _EMAIL.fullmatch(element.data):
                doc.error(element.line, f"ci_logins.{login}: want an email address (or a list of them)")
                ok = False
            else:
                emails.append(element.data.lower())
        if not emails and ok:
            doc.error(line, f"ci_logins.{login}: want an email address (or a list of them)")
            ok = False
        result[str(login).lower()] = tuple(emails)
    return result if ok else None


def _match(doc: _Doc, node: Located | None = None, *,
           prefix: str = "match") -> tuple[ClaimMatcher, ...] | None:
    """A ``match`` mapping (the document's own, or ``node`` — e.g. ``may_act.match``)."""
    if node is None:
        node = doc.node.get("match")
    if node is None or doc.quiet(node):
        return None
    if not node.is_mapping or not node.items:
        got = "an empty mapping" if node.is_mapping else type_name(node.data)
        doc.error(node.line, f"{prefix} must be a non-empty mapping of claim -> pattern, got {got}")
        return None
    matchers: list[ClaimMatcher] = []
    ok = True
    for claim, (key_line, spec) in node.items.items():
        if not _claim_path_ok(claim):
            doc.error(key_line, f"{prefix}: {claim!r} is not a claim name or dotted path")
            ok = False
            continue
        patterns = _patterns(doc, claim, spec, prefix=prefix)
        if patterns is None:
            ok = False
            continue
        matchers.append(ClaimMatcher(claim=claim, patterns=patterns, spec=spec.data))
    return tuple(matchers) if ok else None


def _patterns(doc: _Doc, claim: str, spec: Located, *,
              prefix: str = "match") -> tuple[re.Pattern[str], ...] | None:
    if doc.quiet(spec):
        return None
    if not spec.is_list:
        one = _pattern(doc, claim, spec, prefix=prefix)
        return None if one is None else (one,)
    assert spec.elements is not None
    if not spec.elements:
        doc.error(spec.line, f"{prefix}.{claim}: an empty list matches nothing")
        return None
    patterns = []
    for element in spec.elements:
        if doc.quiet(element):
            pattern = None
        elif element.is_list:
            doc.error(element.line, f"{prefix}.{claim}: lists of patterns cannot be nested")
            pattern = None
        else:
            pattern = _pattern(doc, claim, element, prefix=prefix)
        if pattern is not None:
            patterns.append(pattern)
    return tuple(patterns) if len(patterns) == len(spec.elements) else None


def _pattern(doc: _Doc, claim: str, spec: Located, *, prefix: str = "match") -> re.Pattern[str] | None:
    value = spec.data
    if isinstance(value, (bool, int, str)):
        return compile_exact(claim_text(value))  # type: ignore[arg-type]
    if not spec.is_mapping:
        hint = "; quote it to match text" if isinstance(value, float) else ""
        doc.error(spec.line, f"{prefix}.{claim}: a pattern is a string, integer, boolean, "
                             f"{{glob: ...}}, {{regex: ...}} or a list of these, got {type_name(value)}{hint}")
        return None
    assert spec.items is not None
    keys = list(spec.items)
    if len(keys) != 1 or keys[0] not in _PATTERN_KEYS:
        doc.error(spec.line, f"{prefix}.{claim}: a pattern mapping has exactly one key, 'glob' or "
                             f"'regex', got {', '.join(repr(k) for k in keys) or 'none'}")
        return None
    kind = keys[0]
    body = spec.items[kind][1]
    if doc.quiet(body):
        return None
    if not isinstance(body.data, str) or body.data == "":
        got = "an empty string" if isinstance(body.data, str) else type_name(body.data)
        doc.error(body.line, f"{prefix}.{claim}: {kind} must be a non-empty string, got {got}")
        return None
    try:
        if kind == "glob":
            return compile_glob(body.data)
        return compile_regex(body.data)
    except (re.error, ValueError) as exc:
        doc.error(body.line, f"{prefix}.{claim}: invalid {kind} {body.data!r}: {exc}")
        return None


# ---------------------------------------------------------------------------- kind: client

def _compile_client(doc: _Doc) -> None:
    doc.check_keys(CLIENT_KEYS, CLIENT_KEYS)
    node = doc.node
    secret_sha256 = None
    secret_node = node.get("secret_sha256")
    if secret_node is not None and not doc.quiet(secret_node):
        value = secret_node.data
        if not isinstance(value, str):
            doc.error(secret_node.line, f"secret_sha256 must be a quoted string of 64 hex digits, "
                                        f"got {type_name(value)}")
        elif not _SHA256_HEX.fullmatch(value):
            # never echo the value: someone may have pasted the secret itself here
            doc.error(secret_node.line, f"secret_sha256 must be 64 hex digits (a SHA-256 of the "
                                        f"secret, not the secret), got {len(value)} characters")
        else:
            secret_sha256 = value.lower()
    may: set[str] = set()
    may_nodes = doc.string_list("may")
    for element in may_nodes or ():
        if element.data not in CLIENT_PERMISSIONS:
            doc.error(element.line, f"unknown permission {element.data!r} "
                                    f"(one of: {', '.join(sorted(CLIENT_PERMISSIONS))})")
        else:
            may.add(element.data)

    if not doc.ok or doc.name is None:
        return
    assert secret_sha256 is not None
    doc.loader.documents["client"][doc.name] = node.data
    doc.loader.clients[doc.name] = Client(
        name=doc.name, secret_sha256=secret_sha256, may=frozenset(may), source=doc.source,
    )
