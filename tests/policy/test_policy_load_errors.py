"""Every load error names the file and the line, and says what is wrong."""
from __future__ import annotations

import pytest

ISSUER = """\
kind: issuer
name: other
audience: https://broker.example.com
"""

POLICY = """\
kind: policy
name: p
issuer: gha
targets: [reports-api]
"""

# (case name, case.yaml text, line, substring of the message)
CASES = [
    # --- YAML itself -------------------------------------------------------------------------
    ("yaml syntax error", "kind: target\nname: [oops\n", 3, "YAML syntax error"),
    ("yaml duplicate key", "kind: target\nname: t\nname: u\ntype: jwt\nmax_ttl: 60\n", 3,
     "duplicate key 'name' (first at line 2)"),
    ("yaml duplicate nested key", POLICY + "match:\n  ref: a\n  ref: b\n", 7, "duplicate key 'ref'"),
    ("yaml anchor", "kind: target\nname: &n t\ntype: jwt\nmax_ttl: 60\n", 2, "anchors (&n) are not allowed"),
    ("yaml alias", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\naudience: *n\n", 5,
     "aliases (*n) are not allowed"),
    ("yaml alias as a key", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\n*k: x\n", 5, "aliases (*k)"),
    ("yaml alias in a list", POLICY + "match:\n  ref: [a, *b]\n", 6, "aliases (*b)"),
    ("yaml python tag", "kind: target\nname: t\ntype: !!python/object:os.system jwt\nmax_ttl: 60\n", 3,
     "YAML tag tag:yaml.org,2002:python/object:os.system is not allowed"),
    ("yaml custom tag", "kind: target\nname: t\ntype: !mine jwt\nmax_ttl: 60\n", 3, "YAML tag !mine"),
    ("yaml merge key", "kind: target\nname: t\n<<: {type: jwt}\nmax_ttl: 60\ntype: jwt\n", 3,
     "merge keys (<<) are not allowed"),
    ("yaml unquoted date", POLICY + "match:\n  day: 2024-01-01\n", 6, "unquoted date/time '2024-01-01'"),
    ("yaml infinite float", POLICY + "match:\n  x: .inf\n", 6, "not a finite number"),
    # found by tests/fuzz: each once escaped the loader as another exception, or loaded
    ("yaml NUL character", "kind: target\nname: t\x00\n", 2, "character U+0000 is not allowed"),
    ("yaml nesting too deep", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\naudience: "
     + "[" * 100 + "]" * 100 + "\n", 5, "nested deeper than 64 levels"),
    ("yaml integer too large", POLICY + "match:\n  x: " + "9" * 5000 + "\n", 6, "integer too large"),
    ("yaml hex integer too large", POLICY + "match:\n  x: 0x" + "f" * 5000 + "\n", 6, "integer too large"),
    ("regex nested too deeply", POLICY + "match:\n  sub: {regex: '" + "(" * 2000 + "a" + ")" * 2000
     + "'}\n", 6, "invalid regex: groups nested too deeply"),
    ("regex repetition too large", POLICY + "match:\n  sub: {regex: 'a{99999999999}'}\n", 6,
     "the repetition number is too large"),
    ("duration too long to be one", "kind: target\nname: t\ntype: jwt\nmax_ttl: 99999999999999999999d\n",
     4, "max_ttl: not a duration: '99999999999999999999d'"),
    ("duration beyond a year", "kind: target\nname: t\ntype: jwt\nmax_ttl: 366d\n", 4,
     "max_ttl must be at most 365d, got '366d'"),
    ("duration beyond a year in seconds", POLICY + "match: {x: y}\nmax_ttl: 99999999999999\n", 6,
     "max_ttl must be at most 365d, got an integer"),
    ("yaml lone surrogate escape", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\naudience: \"\\ud83d\"\n", 5,
     "half of a UTF-16 pair"),
    ("duration in other digits", "kind: target\nname: t\ntype: jwt\nmax_ttl: '\u0663\u0663m'\n", 4,
     "not a duration"),
    ("document not a mapping", "- kind: target\n", 1, "must be a mapping with a 'kind', got a list"),
    ("document without kind", "name: t\ntype: jwt\n", 1, "document has no 'kind'"),
    ("unknown kind", "kind: role\nname: t\n", 1, "unknown kind 'role' (one of: issuer, target, policy, client, human-idp)"),
    ("kind not a string", "kind: 3\nname: t\n", 1, "unknown kind an integer"),
    # --- names -------------------------------------------------------------------------------
    ("name missing", "kind: target\ntype: jwt\nmax_ttl: 60\n", 1, "target document: missing required key 'name'"),
    ("name bad characters", "kind: target\nname: 'reports api'\ntype: jwt\nmax_ttl: 60\n", 2,
     "name must be 1-128 letters"),
    ("name starts with dash", "kind: target\nname: -t\ntype: jwt\nmax_ttl: 60\n", 2, "got '-t'"),
    ("name too long", f"kind: target\nname: {'a' * 129}\ntype: jwt\nmax_ttl: 60\n", 2, "name must be 1-128"),
    ("name not a string", "kind: target\nname: [t]\ntype: jwt\nmax_ttl: 60\n", 2, "got a list"),
    ("duplicate issuer name across files", ISSUER.replace("other", "gha") + "issuer: https://x.example\n", 2,
     "duplicate issuer name 'gha' (first defined at"),
    ("duplicate target name in one file",
     "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\n---\nkind: target\nname: t\ntype: jwt\nmax_ttl: 60\n"
     "audience: t2\n", 7, "duplicate target name 't' (first defined at"),
    # --- kind: issuer ------------------------------------------------------------------------
    ("issuer unknown key", ISSUER + "issuer: https://x.example\njwks: https://x.example/k\n", 5,
     "unknown key 'jwks' (allowed: algorithms, allow_extra_audiences, audience, issuer, jwks_file, jwks_uri"),
    ("issuer missing audience", "kind: issuer\nname: other\nissuer: https://x.example\n", 1,
     "issuer 'other': missing required key 'audience'"),
    ("issuer required when preset has none", ISSUER + "preset: kubernetes\n", 1,
     "missing required key 'issuer' (preset 'kubernetes' has no default issuer)"),
    ("issuer required with default preset", ISSUER, 1, "preset 'oidc' has no default issuer"),
    ("issuer unknown preset", ISSUER + "preset: jenkins\n", 4,
     "unknown preset 'jenkins' (one of: github-actions, gitlab-ci, kubernetes, oidc, spiffe)"),
    ("issuer not a URL", ISSUER + "issuer: token.actions.githubusercontent.com\n", 4, "must be an https URL"),
    ("issuer http on a public host", ISSUER + "issuer: http://idp.example.com\n", 4,
     "http is allowed only for loopback hosts"),
    ("issuer http on a private address", ISSUER + "issuer: http://10.0.0.1:8080\n", 4, "loopback"),
    ("issuer with credentials", ISSUER + "issuer: https://user:pw@idp.example.com\n", 4,
     "must not contain credentials"),
    ("issuer with query", ISSUER + "issuer: https://idp.example.com/?x=1\n", 4, "must not contain a query"),
    ("issuer with fragment", ISSUER + "issuer: https://idp.example.com/#x\n", 4, "must not contain a fragment"),
    ("issuer not a string", ISSUER + "issuer: [https://idp.example.com]\n", 4, "issuer must be a non-empty string"),
    ("jwks_uri http", ISSUER + "issuer: https://x.example\njwks_uri: http://x.example/keys\n", 5, "jwks_uri must use https"),
    ("jwks_file missing", ISSUER + "issuer: https://x.example\njwks_file: nope.json\n", 5,
     "jwks_file 'nope.json' does not exist"),
    ("algorithms none", ISSUER + "issuer: https://x.example\nalgorithms: [none]\n", 5,
     "'none' is never allowed: an unsigned token proves nothing"),
    ("algorithms HS256", ISSUER + "issuer: https://x.example\nalgorithms:\n  - RS256\n  - HS256\n", 7,
     "'HS256' is not allowed: HMAC uses a shared secret"),
    ("algorithms unknown", ISSUER + "issuer: https://x.example\nalgorithms: [RS999]\n", 5,
     "unknown algorithm 'RS999' (allowed: ES256"),
    ("algorithms not a list", ISSUER + "issuer: https://x.example\nalgorithms: RS256\n", 5,
     "algorithms must be a non-empty list"),
    ("algorithms empty", ISSUER + "issuer: https://x.example\nalgorithms: []\n", 5, "got an empty list"),
    ("leeway too large", ISSUER + "issuer: https://x.example\nleeway: 301\n", 5,
     "leeway must be whole seconds from 0 to 300, got 301"),
    ("leeway negative", ISSUER + "issuer: https://x.example\nleeway: -1\n", 5, "got -1"),
    ("leeway as duration text", ISSUER + "issuer: https://x.example\nleeway: 60s\n", 5, "got a string"),
    ("max_token_age bad", ISSUER + "issuer: https://x.example\nmax_token_age: 5 minutes\n", 5,
     "max_token_age: not a duration"),
    ("principal unbalanced", ISSUER + "issuer: https://x.example\nprincipal: 'ci:{sub'\n", 5,
     "principal has an unbalanced"),
    ("principal malformed placeholder", ISSUER + "issuer: https://x.example\nprincipal: 'ci:{a..b}'\n", 5,
     "malformed placeholder {a..b}"),
    ("principal empty placeholder", ISSUER + "issuer: https://x.example\nprincipal: 'ci:{}'\n", 5,
     "malformed placeholder {}"),
    ("principal without placeholder", ISSUER + "issuer: https://x.example\nprincipal: ci-bot\n", 5,
     "at least one {claim} placeholder"),
    ("run not a mapping", ISSUER + "issuer: https://x.example\nrun: [id]\n", 5, "run must be a mapping"),
    ("run removes a field the preset lacks",
     "kind: issuer\nname: other\npreset: github-actions\naudience: a\nrun:\n  id: run_id\n  nope: null\n", 7,
     "run field 'nope' is null but preset 'github-actions' has no such field"),
    ("run value not a claim", ISSUER + "issuer: https://x.example\nrun:\n  id: [a]\n", 6,
     "run.id must be a claim name"),
    ("run bad field name", ISSUER + "issuer: https://x.example\nrun:\n  run-id: sub\n", 6,
     "run field 'run-id' must be"),
    ("required_claims not claims", ISSUER + "issuer: https://x.example\nrequired_claims: ['a b']\n", 5,
     "required_claims: 'a b' is not a claim"),
    # --- kind: target ------------------------------------------------------------------------
    ("target unknown type", "kind: target\nname: db\ntype: mainframe\nmax_ttl: 60\nadmin_dsn_env: X\n", 3,
     "unknown target type 'mainframe' (one of: "),
    ("target missing type", "kind: target\nname: db\nmax_ttl: 60\n", 1, "missing required key 'type'"),
    ("target missing max_ttl", "kind: target\nname: t\ntype: jwt\n", 1,
     "target 't': missing required key 'max_ttl'"),
    ("target bad max_ttl", "kind: target\nname: t\ntype: jwt\nmax_ttl: 15 minutes\n", 4,
     "max_ttl: not a duration: '15 minutes'"),
    ("target zero max_ttl", "kind: target\nname: t\ntype: jwt\nmax_ttl: 0\n", 4, "duration must be positive"),
    ("target boolean max_ttl", "kind: target\nname: t\ntype: jwt\nmax_ttl: yes\n", 4, "not a duration: True"),
    ("target key of another type", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\nadmin_dsn_env: X\n", 5,
     "unknown key 'admin_dsn_env' (allowed: audience, kind, max_ttl, name, type)"),
    ("target empty audience", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\naudience: ''\n", 5,
     "audience must be a non-empty string, got an empty string"),
    ("target duplicate audience", "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\n"
     "audience: https://reports.internal\n", 5,
     "audience 'https://reports.internal' is already the audience of target 'reports-api'"),
    ("target default audience collides", "kind: target\nname: https\ntype: jwt\nmax_ttl: 60\n---\n"
     "kind: target\nname: t\ntype: jwt\nmax_ttl: 60\naudience: https\n", 10, "already the audience"),
    # --- kind: policy ------------------------------------------------------------------------
    ("policy unknown issuer", "kind: policy\nname: p\nissuer: gitlab\ntargets: [reports-api]\nmatch: {sub: x}\n",
     3, "policy 'p': unknown issuer 'gitlab' (defined issuers: gha)"),
    ("policy unknown target", "kind: policy\nname: p\nissuer: gha\ntargets:\n  - reports-api\n  - billing\n"
     "match: {sub: x}\n", 6, "unknown target 'billing' (defined targets: reports-api)"),
    ("policy targets a string", "kind: policy\nname: p\nissuer: gha\ntargets: reports-api\nmatch: {sub: x}\n",
     4, "targets must be a list of strings, got a string"),
    ("policy targets with integer", "kind: policy\nname: p\nissuer: gha\ntargets: [reports-api, 3]\n"
     "match: {sub: x}\n", 4, "targets must be a list of non-empty strings, got an integer"),
    ("policy targets empty", "kind: policy\nname: p\nissuer: gha\ntargets: []\nmatch: {sub: x}\n", 4,
     "targets must not be empty"),
    ("policy targets repeated", "kind: policy\nname: p\nissuer: gha\ntargets:\n  - reports-api\n"
     "  - reports-api\nmatch: {sub: x}\n", 6, "targets lists 'reports-api' twice"),
    ("policy issuer not a string", "kind: policy\nname: p\nissuer: {name: gha}\ntargets: [reports-api]\n"
     "match: {sub: x}\n", 3, "issuer must be a non-empty string, got a mapping"),
    ("policy missing match", POLICY, 1, "policy 'p': missing required key 'match'"),
    ("policy empty match", POLICY + "match: {}\n", 5, "match must be a non-empty mapping"),
    ("policy match a list", POLICY + "match: [sub]\n", 5, "match must be a non-empty mapping of claim -> pattern, got a list"),
    ("policy bad regex", POLICY + "match:\n  sub: x\n  ref: {regex: 'refs/(heads'}\n", 7,
     "match.ref: invalid regex 'refs/(heads'"),
    ("policy bad glob", POLICY + "match:\n  ref:\n    glob: 'refs/[heads'\n", 7, "match.ref: invalid glob"),
    ("policy empty regex", POLICY + "match:\n  ref: {regex: ''}\n", 6, "regex must be a non-empty string"),
    ("policy regex not a string", POLICY + "match:\n  ref: {regex: [a]}\n", 6, "regex must be a non-empty string, got a list"),
    ("policy pattern with other key", POLICY + "match:\n  ref: {prefix: refs/}\n", 6,
     "exactly one key, 'glob' or 'regex', got 'prefix'"),
    ("policy pattern with both keys", POLICY + "match:\n  ref: {glob: a, regex: b}\n", 6, "got 'glob', 'regex'"),
    ("policy null pattern", POLICY + "match:\n  ref:\n", 6, "got null"),
    ("policy float pattern", POLICY + "match:\n  ver: 1.5\n", 6, "got a number; quote it"),
    ("policy empty list pattern", POLICY + "match:\n  ref: []\n", 6, "an empty list matches nothing"),
    ("policy nested list pattern", POLICY + "match:\n  ref:\n    - a\n    - [b]\n", 8, "cannot be nested"),
    ("policy bad element in list", POLICY + "match:\n  ref:\n    - a\n    - {regex: '+'}\n", 8, "invalid regex '+'"),
    ("policy bad claim path", POLICY + "match:\n  'a..b': x\n", 6, "match: 'a..b' is not a claim name"),
    ("policy scope with space", POLICY + "match: {sub: x}\nscopes:\n  - reports:read\n  - 'reports write'\n", 8,
     "scope 'reports write' must not contain spaces"),
    ("policy scopes not a list", POLICY + "match: {sub: x}\nscopes: reports:read\n", 6,
     "scopes must be a list of strings"),
    ("policy empty scope", POLICY + "match: {sub: x}\nscopes: ['']\n", 6, "got an empty string"),
    ("policy bad max_ttl", POLICY + "match: {sub: x}\nmax_ttl: 1w\n", 6, "max_ttl: not a duration: '1w'"),
    ("policy future key not yet allowed", POLICY + "match: {sub: x}\nreviewers: {required: true}\n", 6,
     "unknown key 'reviewers' (allowed: approval, derive, issuer, kind, match, max_depth, max_ttl, may_act, name, "
     "scopes, targets)"),
    ("policy duplicate name", POLICY + "match: {sub: x}\n---\n" + POLICY + "match: {sub: y}\n", 8,
     "duplicate policy name 'p'"),
    # --- kind: client ------------------------------------------------------------------------
    ("client secret too short", "kind: client\nname: c\nsecret_sha256: 'abc123'\nmay: [audit]\n", 3,
     "secret_sha256 must be 64 hex digits"),
    ("client secret not hex", f"kind: client\nname: c\nsecret_sha256: '{'g' * 64}'\nmay: [audit]\n", 3,
     "64 hex digits"),
    ("client secret unquoted number", f"kind: client\nname: c\nsecret_sha256: {'1' * 64}\nmay: [audit]\n", 3,
     "must be a quoted string of 64 hex digits, got an integer"),
    ("client missing secret", "kind: client\nname: c\nmay: [audit]\n", 1, "missing required key 'secret_sha256'"),
    ("client unknown permission", f"kind: client\nname: c\nsecret_sha256: '{'a' * 64}'\nmay:\n  - audit\n"
     "  - mint\n", 6, "unknown permission 'mint' (one of: audit, introspect, revoke)"),
    ("client empty may", f"kind: client\nname: c\nsecret_sha256: '{'a' * 64}'\nmay: []\n", 4, "may must not be empty"),
    ("client unknown key", f"kind: client\nname: c\nsecret_sha256: '{'a' * 64}'\nmay: [audit]\nsecret: x\n", 5,
     "unknown key 'secret'"),
]


@pytest.mark.parametrize("text, line, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_error_is_reported_with_file_and_line(files, text, line, message):
    problems = files.problems(text)
    assert [str(p) for p in problems if message in p.message], f"no problem says {message!r}: {problems}"
    hit = next(p for p in problems if message in p.message)
    assert hit.file == str(files.root / "case.yaml")
    assert hit.line == line, problems
    assert len(problems) == 1, f"one mistake, one problem: {problems}"


def test_client_secret_problem_never_echoes_the_value(files):
    secret = "hunter2-is-my-password"
    problems = files.problems(f"kind: client\nname: c\nsecret_sha256: '{secret}'\nmay: [audit]\n")
    assert len(problems) == 1
    assert secret not in str(problems[0])


def test_every_problem_of_a_file_is_reported_at_once(files):
    problems = files.problems("""
        kind: target
        name: t
        type: jwt
        max_ttl: forever
        colour: blue
        ---
        kind: policy
        name: p
        issuer: gha
        targets: [nope]
        match: {sub: x}
    """)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (4, "target 't'"), (5, "target 't'"), (10, "policy 'p'"),
    ]
    assert "max_ttl" in problems[0].message
    assert "unknown key 'colour'" in problems[1].message
    assert "unknown target 'nope'" in problems[2].message


def test_problems_of_every_file_are_reported_in_file_then_line_order(files):
    from broker.policy import PolicyError, load_policy_files

    first = files.write("a.yaml", "kind: target\nname: t\ntype: jwt\nmax_ttl: 0\n")
    second = files.write("b.yaml", "kind: client\nname: c\nsecret_sha256: x\nmay: [audit]\n---\nkind: nope\n")
    with pytest.raises(PolicyError) as info:
        load_policy_files([files.base, first, second])
    assert [(p.file, p.line) for p in info.value.problems] == [
        (str(first), 4), (str(second), 3), (str(second), 6),
    ]
    text = str(info.value)
    assert text.splitlines()[0] == f"{first}:4: target 't': max_ttl: duration must be positive: 0"
    assert len(text.splitlines()) == 3


def test_a_syntax_error_keeps_the_documents_before_it_and_other_files(files):
    from broker.policy import PolicyError, load_policy_files

    broken = files.write("a.yaml", "kind: target\nname: t\ntype: jwt\nmax_ttl: 0\n---\nkind: [\n")
    other = files.write("b.yaml", "kind: nope\n")
    with pytest.raises(PolicyError) as info:
        load_policy_files([files.base, broken, other])
    assert [(p.file, p.line) for p in info.value.problems] == [(str(broken), 4), (str(broken), 7), (str(other), 1)]
    assert "YAML syntax error" in info.value.problems[1].message


def test_a_reference_to_a_document_with_errors_is_not_reported_twice(files):
    problems = files.problems("""
        kind: issuer
        name: gl
        preset: gitlab-ci
        audience: a
        leeway: 1000
        ---
        kind: policy
        name: p
        issuer: gl
        targets: [reports-api]
        match: {project_path: acme/x}
    """)
    assert len(problems) == 1 and "leeway" in problems[0].message


@pytest.mark.parametrize("content, message", [
    ('{"keys": []}', None),
    ("not json", "is not a readable JSON key set"),
    ('{"kty": "RSA"}', "want an object with a 'keys' list"),
], ids=["valid key set", "not json", "a single key, not a set"])
def test_jwks_file_must_hold_a_key_set(files, content, message):
    (files.root / "keys.json").write_text(content)
    text = ISSUER + "issuer: https://x.example\njwks_file: keys.json\n"
    if message is None:
        policy_set = files.load(text)
        assert policy_set.issuers["other"].jwks_file == str((files.root / "keys.json").resolve())
        return
    problems = files.problems(text)
    assert [(p.line, message in p.message) for p in problems] == [(5, True)]


def test_jwks_uri_and_jwks_file_are_exclusive(files):
    (files.root / "keys.json").write_text('{"keys": []}')
    problems = files.problems(ISSUER + "issuer: https://x.example\njwks_uri: https://x.example/k\n"
                                       "jwks_file: keys.json\n")
    assert [(p.line, p.message) for p in problems] == [
        (6, "issuer 'other': give at most one of 'jwks_uri' and 'jwks_file'"),
    ]


def test_alias_bombs_are_refused_without_expanding(files):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    problems = files.problems("kind: target\nname: t\ntype: jwt\nmax_ttl: 60\n" + bomb)
    assert problems and all("anchors" in p.message or "aliases" in p.message or "unknown key" in p.message
                            for p in problems)
