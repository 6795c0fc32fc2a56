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
    ``type`` is a target kind of :data:`broker.targets.registry.KINDS` (through
    :data:`broker.policy.targets.TARGET_TYPES`), which also says which extra keys the kind
    allows and how they are checked. ``audience`` defaults to the name and must be unique among
    targets. ``max_ttl`` is required.
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

How: each document kind's keys are data (:mod:`broker.policy.documents`, written in the
vocabulary of :mod:`broker.targets.keys`), read by one walker (:mod:`broker.policy.walk`);
this module reads the files, names the documents and checks what spans documents.

Digests: a policy's digest is ``"sha256:" + sha256_hex(canonical_json(document))`` over the
document as parsed (so key order and YAML spelling do not matter, values do). The policy set's
digest covers the ordered list of policy digests and the issuer, target and client documents.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from broker.common.canonical import canonical_json, sha256_hex
from broker.common.durations import format_duration
from broker.policy import documents
from broker.policy.documents import PERSON_CLAIMS
from broker.policy.model import Client, HumanIdP, IssuerConfig, Policy, PolicySet, SourceRef, Target
from broker.policy.problems import PolicyError, Problem
from broker.policy.source import Located, read_documents, type_name
from broker.policy.targets import TARGET_TYPES, TargetContext
from broker.policy.walk import INVALID, Walker
from broker.targets.keys import TargetSchema, Text

KINDS = ("issuer", "target", "policy", "client", "human-idp")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Policy keys beyond the core ones, added by later issues (fan-out: "derive", "max_depth";
# human authorizers: "approval", "may_act"). A key listed here is accepted, checked by its
# reader in broker.policy.documents.EXTRA_POLICY_KEYS, and stored, as written, in Policy.extra
# (and covered by the policy's digest).
ALLOWED_EXTRA_POLICY_KEYS: frozenset[str] = frozenset({"derive", "max_depth", "approval", "may_act"})
FUTURE_POLICY_KEYS = ALLOWED_EXTRA_POLICY_KEYS   # the old name, for code written against it

TargetTypes = Mapping[str, TargetSchema]


# ---------------------------------------------------------------------------- public API

def load_policy_dir(path: str | Path, *, target_types: TargetTypes | None = None) -> PolicySet:
    """Load every ``*.yaml`` / ``*.yml`` file directly in ``path``, in name order."""
    root = Path(path)
    if not root.is_dir():
        reason = "does not exist" if not root.exists() else "is not a directory"
        raise PolicyError([Problem(str(root), 0, f"policy directory {reason}")])
    return load_policy_files(policy_files(root), target_types=target_types)


def policy_files(root: Path) -> list[Path]:
    """The policy files of a folder: ``*.yaml`` / ``*.yml``, not hidden, in name order."""
    return sorted((p for p in root.iterdir()
                   if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()),
                  key=lambda p: p.name)


def load_policy_files(paths: Iterable[str | Path], *,
                      target_types: TargetTypes | None = None) -> PolicySet:
    """Load the given files in the given order (policies keep that order). ``target_types``
    (default :data:`broker.policy.targets.TARGET_TYPES`: the broker's target kinds) says which
    ``type`` a target may have and what keys each type takes."""
    loader = _Loader(target_types)
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
                     base_dir: str | Path | None = None,
                     target_types: TargetTypes | None = None) -> PolicySet:
    """Load policy documents from a string. ``jwks_file`` paths are relative to ``base_dir``
    (default: the folder of ``filename``, or the working directory for ``<string>``)."""
    loader = _Loader(target_types)
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

class _Doc(Walker):
    """One document being read: the walker, plus its kind and name for messages."""

    def __init__(self, loader: _Loader, file: str, base_dir: Path, node: Located, kind: str) -> None:
        super().__init__(self._add, base_dir=base_dir)
        self.loader = loader
        self.file = file
        self.node = node
        self.kind = kind
        self.name: str | None = None

    def _add(self, line: int, message: str) -> None:
        self.loader.problems.append(Problem(self.file, line, f"{self.label}: {message}"))

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.file, self.node.line)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else f"{self.kind} document"

    def read_name(self) -> None:
        node = self.node.get("name")
        if node is None or self.quiet(node):
            return                      # a missing name is reported with the other keys
        if not isinstance(node.data, str) or not NAME_RE.fullmatch(node.data):
            self.say(node, "name must be 1-128 letters, digits, '.', '_' or '-' starting with a "
                           "letter or digit, got {shown}", "name")
            return
        self.name = node.data
        declared = self.loader.declared[self.kind]
        if self.name in declared:
            self.error(node.line, f"duplicate {self.kind} name {self.name!r} "
                                  f"(first defined at {declared[self.name]})")
            return
        declared[self.name] = SourceRef(self.file, node.line)


class _Loader:
    """Accumulates documents and problems over all files; :meth:`finish` builds the set."""

    def __init__(self, target_types: TargetTypes | None) -> None:
        self.target_types = TARGET_TYPES if target_types is None else target_types
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
        self.references: list[tuple[_Doc, str, Located]] = []   # (document, kind, name node)
        self.policy_checks: list[tuple[_Doc, Policy]] = []      # cross-document checks in finish()

    def load_text(self, text: str, file: str, base_dir: Path) -> None:
        def report(line: int, message: str) -> None:
            self.problems.append(Problem(file, line, message))

        for node in read_documents(text, report):
            self._document(node, file, base_dir)

    def _document(self, node: Located, file: str, base_dir: Path) -> None:
        if not node.is_mapping:
            self.problems.append(Problem(
                file, node.line,
                f"a policy document must be a mapping with a 'kind', got {type_name(node.data)}"))
            return
        kind_node = node.get("kind")
        if kind_node is None:
            self.problems.append(Problem(
                file, node.line, f"document has no 'kind' (one of: {', '.join(KINDS)})"))
            return
        kind = kind_node.data
        if kind_node.reported:
            return
        if not isinstance(kind, str) or kind not in KINDS:
            shown = repr(kind) if isinstance(kind, str) else type_name(kind)
            self.problems.append(Problem(
                file, kind_node.line, f"unknown kind {shown} (one of: {', '.join(KINDS)})"))
            return
        doc = _Doc(self, file, base_dir, node, kind)
        doc.read_name()
        as_parsed = copy.deepcopy(node.data)      # what digests cover: the document as written
        compile_document = {"issuer": self._issuer, "target": self._target, "policy": self._policy,
                            "client": self._client, "human-idp": self._human_idp}[kind]
        compile_document(doc, as_parsed)
        self.references.extend((doc, ref_kind, ref) for ref_kind, ref in doc.references)

    # -- one method per document kind: walk its schema, then keep what it compiles to ----------
    def _issuer(self, doc: _Doc, as_parsed: Any) -> None:
        v = doc.block(documents.ISSUER, doc.node)
        if not doc.ok or doc.name is None:
            return
        self.documents["issuer"][doc.name] = as_parsed
        self.issuers[doc.name] = IssuerConfig(
            name=doc.name, preset=v["preset"], issuer=v["issuer"], audience=v["audience"],
            algorithms=v["algorithms"], principal=v["principal"], run=v["run"],
            required_claims=v["required_claims"], jwks_uri=v.get("jwks_uri"),
            jwks_file=v.get("jwks_file"), max_token_age=v.get("max_token_age"),
            leeway=v["leeway"], allow_extra_audiences=v["allow_extra_audiences"],
            source=doc.source)

    def _target(self, doc: _Doc, as_parsed: Any) -> None:
        node = doc.node
        schema: TargetSchema | None = None
        type_node = node.get("type")
        if type_node is not None:
            type_ = doc.read(Text(), type_node, "type")
            if type_ is not INVALID:
                schema = self.target_types.get(type_)
                if schema is None:
                    doc.error(type_node.line, f"unknown target type {type_!r} "
                                              f"(one of: {', '.join(sorted(self.target_types))})")
        v = doc.block(documents.target_block(schema), node, unknown_ok=schema is None)
        audience = v.get("audience", doc.name)
        options: dict[str, Any] = {}
        if schema is not None and doc.name is not None:
            nodes = {key: n for key in schema.keys if (n := node.get(key)) is not None}
            options = {key: (n.data if v[key] is INVALID else v[key]) for key, n in nodes.items()}
            options.update((key, v[key]) for key in schema.keys if key not in nodes and key in v)
            ctx = TargetContext(name=doc.name, type=schema.name, options=options, file=doc.file,
                                line=node.line, base_dir=doc.base_dir, nodes=nodes)
            for problem in (schema.validate(ctx) or ()) if schema.validate is not None else ():
                doc.ok = False
                self.problems.append(problem)
            options = ctx.options
        if schema is not None and schema.ttl_check is not None and isinstance(v.get("max_ttl"), int):
            problem = schema.ttl_check(v["max_ttl"])
            if problem is not None:
                doc.error(node.key_line("max_ttl"), f"max_ttl {format_duration(v['max_ttl'])} {problem}")
        if isinstance(audience, str) and doc.name is not None:
            line = node.get("audience").line if node.get("audience") is not None else node.line  # type: ignore[union-attr]
            other = self.audiences.get(audience)
            if other is not None:
                doc.error(line, f"audience {audience!r} is already the audience of target "
                                f"{other[0]!r} ({other[1]})")
            else:
                self.audiences[audience] = (doc.name, SourceRef(doc.file, line))
        if not doc.ok or schema is None or doc.name is None:
            return
        self.documents["target"][doc.name] = as_parsed
        self.targets[doc.name] = Target(name=doc.name, type=schema.name, audience=audience,
                                        max_ttl=v["max_ttl"], options=options, source=doc.source)

    def _policy(self, doc: _Doc, as_parsed: Any) -> None:
        extra_keys = ALLOWED_EXTRA_POLICY_KEYS
        v = doc.block(documents.policy_block(extra_keys), doc.node)
        if not doc.ok or doc.name is None:
            return
        policy = Policy(
            name=doc.name, issuer=v["issuer"], targets=v["targets"], match=v["match"],
            scopes=v.get("scopes"), max_ttl=v.get("max_ttl"), digest=_digest(as_parsed),
            extra={key: as_parsed[key] for key in extra_keys if key in as_parsed},
            source=doc.source, derive=v.get("derive") or (),
            max_depth=v.get("max_depth"), approval=v.get("approval"), may_act=v.get("may_act"))
        self.policies.append(policy)
        self.policy_checks.append((doc, policy))

    def _client(self, doc: _Doc, as_parsed: Any) -> None:
        v = doc.block(documents.CLIENT, doc.node)
        if not doc.ok or doc.name is None:
            return
        self.documents["client"][doc.name] = as_parsed
        self.clients[doc.name] = Client(name=doc.name, secret_sha256=v["secret_sha256"],
                                        may=frozenset(v["may"]), source=doc.source)

    def _human_idp(self, doc: _Doc, as_parsed: Any) -> None:
        declared = self.declared["human-idp"]
        if self.human_idp is not None or (doc.name is not None and len(declared) > 1):
            doc.error(doc.node.line, f"only one human-idp document is allowed (the first is at "
                                     f"{next(iter(declared.values()))})")
        v = doc.block(documents.HUMAN_IDP, doc.node)
        if not doc.ok or doc.name is None:
            return
        self.documents["human-idp"][doc.name] = as_parsed
        self.human_idp = HumanIdP(
            name=doc.name, issuer=v["issuer"], client_id=v["client_id"],
            client_secret_env=v.get("client_secret_env"), client_secret_file=v.get("client_secret_file"),
            email_claim=v["email_claim"], groups_claim=v["groups_claim"],
            username_claim=v["username_claim"], audience=v.get("audience"),
            algorithms=v["algorithms"], jwks_uri=v.get("jwks_uri"), scopes=v["scopes"],
            ci_logins=v["ci_logins"], delegation_max_ttl=v["delegation_max_ttl"],
            leeway=v["leeway"], source=doc.source)

    # -- what needs every document ---------------------------------------------------------
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
        for name, source in self.declared["human-idp"].items():
            if name in self.declared["issuer"]:
                self.problems.append(Problem(source.file, source.line, (
                    f"human-idp {name!r}: the name is already used by issuer {name!r} "
                    f"({self.declared['issuer'][name]}); policies name either by it")))
        for doc, policy in self.policy_checks:
            self._check_policy_issuer_kind(doc, policy)
            self._check_policy_ttls(doc, policy)
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
        return PolicySet(issuers=dict(self.issuers), targets=dict(self.targets),
                         policies=tuple(self.policies), clients=dict(self.clients),
                         digest=_digest(digest_input), human_idp=self.human_idp)

    def _check_policy_ttls(self, doc: _Doc, policy: Policy) -> None:
        """A lifetime the policy (or one of its ``derive`` rules) grants for a target must be
        one the target's kind can mint (its schema's ``ttl_check``: e.g. AWS sessions last at
        least 900 s)."""
        limits = [("max_ttl", policy.max_ttl, name) for name in policy.targets]
        limits += [("derive", rule.max_ttl, rule.target) for rule in policy.derive]
        for key, ttl, name in limits:
            target = self.targets.get(name)
            schema = self.target_types.get(target.type) if target is not None else None
            if ttl is None or target is None or schema is None or schema.ttl_check is None:
                continue
            granted = min(ttl, target.max_ttl)
            problem = schema.ttl_check(granted)
            if problem is not None:
                what = "max_ttl" if key == "max_ttl" else "derive: max_ttl"
                doc.error(doc.node.key_line(key), f"{what} {format_duration(ttl)} grants target "
                                                  f"{name!r} ({target.type}) {format_duration(granted)}, "
                                                  f"which {problem}")

    def _check_policy_issuer_kind(self, doc: _Doc, policy: Policy) -> None:
        """What kind of issuer the policy names decides which of ``approval`` and ``may_act``
        it may have (docs/approvals.md)."""
        node = doc.node
        if policy.issuer in self.declared["human-idp"]:
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
        elif policy.issuer in self.declared["issuer"] and policy.may_act is not None:
            doc.error(node.key_line("may_act"), "may_act needs a policy whose issuer is the "
                                                "human-idp (the person the agent acts for)")
        if policy.approval is not None and not self.declared["human-idp"]:
            doc.error(node.key_line("approval"), "approval needs a 'kind: human-idp' document (who "
                                                 "the approvers are)")


def _digest(document: Any) -> str:
    return "sha256:" + sha256_hex(canonical_json(document))
