"""Property: the policy loader answers any file with a policy set or a :class:`PolicyError`
whose problems each name the file and a line — never another exception (RecursionError,
ValueError, OverflowError, yaml's ReaderError…), never a hang; and a well-formed policy set,
generated, loads to exactly what was written.

tests/policy/test_policy_fuzz.py walks the schemas' vocabulary; this module aims at what sits
under it: bytes that are not UTF-8, characters YAML refuses, nesting, alias bombs, numbers and
durations at and past every bound, regular expressions and globs of any shape."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from broker.policy import PolicyError, PolicySet, load_policy_files, load_policy_text
from broker.policy.walk import MAX_DURATION
from tests.support.fuzz import EDGE_INTEGERS, fuzz, hostile_bytes, hostile_text, no_hang

FILE = "fuzz.yaml"

ISSUER = "kind: issuer\nname: gha\npreset: github-actions\naudience: https://broker.example\n"
TARGET = "kind: target\nname: api\ntype: jwt\nmax_ttl: 15m\n"
POLICY = "kind: policy\nname: p\nissuer: gha\ntargets: [api]\nmatch:\n  repository: acme/app\n"


def load(text: str, base_dir: Path | None = None) -> PolicySet | PolicyError:
    """The set, or the PolicyError (checked: every problem names the file and a line >= 0).
    Any other exception propagates and fails the test."""
    with no_hang("policy load"):
        try:
            return load_policy_text(text, FILE, base_dir=base_dir or Path("/nonexistent-fuzz"))
        except PolicyError as error:
            assert error.problems, "a PolicyError lists its problems"
            for problem in error.problems:
                assert problem.file == FILE and problem.line >= 0, problem
                assert problem.message and "Traceback" not in problem.message
            return error


def problems(text: str) -> list[str]:
    result = load(text)
    assert isinstance(result, PolicyError), f"loaded: {text[:200]!r}"
    return [p.message for p in result.problems]


# ------------------------------------------------------------------ anything at all

@fuzz(150)
@given(data=hostile_bytes(200))
def test_any_bytes_in_a_file_load_or_are_a_policy_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("policy") / "case.yaml"
    path.write_bytes(data)
    with no_hang("policy load"):
        try:
            load_policy_files([path])
        except PolicyError as error:
            assert all(p.file == str(path) for p in error.problems)


@fuzz(150)
@given(text=hostile_text(200))
def test_any_text_loads_or_is_a_policy_error(text):
    load(text)


@fuzz(150)
@given(text=st.text(alphabet=st.sampled_from(list("kind: policy\n-[]{},&*!|>'\"#%@`?~<=.09aA\t\x00\x85")),
                    max_size=300))
def test_yaml_punctuation_loads_or_is_a_policy_error(text):
    load(ISSUER + "---\n" + TARGET + "---\n" + text)


# ------------------------------------------------------------------ wrong types at every key

GARBAGE = st.recursive(
    st.one_of(st.none(), st.booleans(), EDGE_INTEGERS.filter(lambda n: abs(n) < 10**4000),
              st.floats(allow_nan=False, allow_infinity=False), hostile_text(20),
              st.sampled_from(["", " ", "15m", "0", "-1s", "99999999999999999999d", "366d", "1e300",
                               "gha", "api", "*", "**", "[", "(", "{sub}", "https://x", "::"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["kind", "name", "glob", "regex", "x", "type",
                                                             "max_ttl", "target", "scopes"]), inner,
                                            max_size=4)),
    max_leaves=12)

BASE_DOCUMENTS = [yaml.safe_load(doc) for doc in (ISSUER, TARGET, POLICY + "scopes: [read]\nmax_ttl: 10m\n")]


def _keys(document: dict) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in document.items():
        out.append((key,))
        if isinstance(value, dict):
            out.extend((key, *sub) for sub in _keys(value))
    return out


PATHS = [(i, path) for i, doc in enumerate(BASE_DOCUMENTS) for path in _keys(doc)]


@fuzz(200)
@given(where=st.sampled_from(PATHS), value=GARBAGE)
def test_any_value_at_any_key_loads_or_is_a_policy_error(where, value):
    index, path = where
    documents = json.loads(json.dumps(BASE_DOCUMENTS))
    node = documents[index]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    load(yaml.safe_dump_all(documents, sort_keys=False))


# ------------------------------------------------------------------ durations: bounded, exact

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@fuzz(200)
@given(number=st.one_of(st.integers(0, 10**6), st.integers(0, 10**25), EDGE_INTEGERS.filter(lambda n: n >= 0)),
       unit=st.sampled_from(sorted(UNITS)), key=st.sampled_from(["target", "policy", "issuer"]))
def test_a_duration_loads_exactly_when_it_is_positive_and_at_most_365d(number, unit, key):
    written = f"{number}{unit}"
    seconds = number * UNITS[unit]
    texts = {
        "target": f"kind: target\nname: api\ntype: jwt\nmax_ttl: '{written}'\n",
        "policy": ISSUER + "---\nkind: target\nname: api\ntype: jwt\nmax_ttl: 365d\n---\n" + POLICY
        + f"max_ttl: '{written}'\n",
        "issuer": ISSUER + f"max_token_age: '{written}'\n",
    }
    result = load(texts[key])
    if 0 < seconds <= MAX_DURATION and len(str(number)) <= 15:
        assert isinstance(result, PolicySet), result
        loaded = {"target": lambda: result.targets["api"].max_ttl,
                  "policy": lambda: result.policies[0].max_ttl,
                  "issuer": lambda: result.issuers["gha"].max_token_age}[key]()
        assert loaded == seconds
    else:
        assert isinstance(result, PolicyError)
        assert any("max_ttl" in p.message or "max_token_age" in p.message for p in result.problems)


@fuzz(100)
@given(number=EDGE_INTEGERS)
def test_an_unquoted_integer_duration_is_bounded_too(number):
    result = load(f"kind: target\nname: api\ntype: jwt\nmax_ttl: {number}\n")
    if 0 < number <= MAX_DURATION:
        assert isinstance(result, PolicySet) and result.targets["api"].max_ttl == number
    else:
        assert isinstance(result, PolicyError) and len(result.problems) == 1


# ------------------------------------------------------------------ nesting and aliases

@fuzz(40)
@given(depth=st.one_of(st.integers(1, 80), st.integers(80, 1200)), brackets=st.sampled_from(["[]", "{}", "block", "mixed"]))
def test_deep_nesting_is_a_policy_error_not_a_recursion_error(depth, brackets):
    if brackets == "[]":
        value = "[" * depth + "]" * depth
    elif brackets == "{}":
        value = "{a: " * depth + "1" + "}" * depth
    elif brackets == "mixed":
        value = "".join("[{a: " if i % 2 else "[" for i in range(depth)) + "1" + "".join(
            "}]" if i % 2 else "]" for i in reversed(range(depth)))
    else:
        value = "\n" + "".join("  " * (i + 1) + "a:\n" for i in range(depth)) + "  " * (depth + 1) + "b"
    result = load(f"kind: target\nname: api\ntype: jwt\nmax_ttl: 15m\nextra: {value}\n")
    assert isinstance(result, PolicyError)          # "extra" is an unknown key, at any depth
    if depth > 70:
        assert any("nested deeper than" in p.message for p in result.problems)


@fuzz(30)
@given(levels=st.integers(2, 12), width=st.integers(2, 12))
def test_an_alias_bomb_is_refused_without_expanding_it(levels, width):
    lines = ["kind: target", "name: api", "type: jwt", "max_ttl: 15m", "a0: &a0 [lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    messages = problems("\n".join(lines) + "\n")        # width ** levels elements if expanded
    assert any("aliases" in m for m in messages) and any("anchors" in m for m in messages)


@fuzz(60)
@given(key=st.sampled_from(["name", "type", "max_ttl", "audience"]), first=GARBAGE, second=GARBAGE)
def test_a_duplicate_key_is_a_policy_error(key, first, second):
    text = f"kind: target\nname: api\ntype: jwt\nmax_ttl: 15m\naudience: a\n{key}: {json.dumps(second)}\n"
    assert any(f"duplicate key {key!r}" in m for m in problems(text))


# ------------------------------------------------------------------ patterns

REGEX_ALPHABET = st.sampled_from(list("()[]{}*+?|^$\\.,-:!=<>aPb0319dswDSW#") + ["(?", "(?P<", "{1,", "\\1"])


@fuzz(150)
@given(kind=st.sampled_from(["regex", "glob"]),
       pattern=st.one_of(st.lists(REGEX_ALPHABET, min_size=1, max_size=40).map("".join),
                         st.integers(1, 1500).map(lambda n: "(" * n + "a" + ")" * n),
                         st.integers(1, 10**12).map(lambda n: f"a{{{n}}}"),
                         hostile_text(30).filter(bool)))
def test_any_pattern_compiles_or_is_a_policy_error(kind, pattern):
    text = ISSUER + "---\n" + TARGET + "---\n" + POLICY.replace(
        "repository: acme/app", f"repository: {{{kind}: {json.dumps(pattern)}}}")
    result = load(text)
    if isinstance(result, PolicySet):
        compiled = result.policies[0].match[0].patterns[0]
        assert isinstance(compiled, re.Pattern)
        if kind == "regex":
            assert compiled.pattern == pattern


# ------------------------------------------------------------------ round trip

NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
SCOPE = st.from_regex(r"[\x21\x23-\x5b\x5d-\x7e]{1,12}", fullmatch=True)
CLAIM = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


@st.composite
def policy_sets(draw: st.DrawFn) -> dict:
    targets = draw(st.dictionaries(NAME, st.integers(1, MAX_DURATION), min_size=1, max_size=3))
    policy_targets = draw(st.lists(st.sampled_from(sorted(targets)), min_size=1, unique=True))
    match = draw(st.dictionaries(CLAIM, st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1,
                                                max_size=20), min_size=1, max_size=3))
    return {
        "targets": targets, "policy_targets": policy_targets, "match": match,
        "scopes": draw(st.lists(SCOPE, unique=True, max_size=4)),
        "max_ttl": draw(st.one_of(st.none(), st.integers(1, MAX_DURATION))),
        "issuer": draw(NAME), "policy": draw(NAME),
    }


@fuzz(50)
@given(policy_sets())
def test_a_well_formed_policy_set_loads_to_what_was_written(spec):
    documents = [{"kind": "issuer", "name": spec["issuer"], "preset": "github-actions",
                  "audience": "https://broker.example"}]
    documents += [{"kind": "target", "name": name, "type": "jwt", "max_ttl": ttl}
                  for name, ttl in spec["targets"].items()]
    policy = {"kind": "policy", "name": spec["policy"], "issuer": spec["issuer"],
              "targets": spec["policy_targets"], "match": spec["match"], "scopes": spec["scopes"]}
    if spec["max_ttl"] is not None:
        policy["max_ttl"] = spec["max_ttl"]
    result = load(yaml.safe_dump_all([*documents, policy], sort_keys=False, allow_unicode=True))
    assert isinstance(result, PolicySet), result
    assert {n: t.max_ttl for n, t in result.targets.items()} == spec["targets"]
    (loaded,) = result.policies
    assert (loaded.name, loaded.issuer, list(loaded.targets)) == (spec["policy"], spec["issuer"],
                                                                  spec["policy_targets"])
    assert tuple(loaded.scopes or ()) == tuple(spec["scopes"]) and loaded.max_ttl == spec["max_ttl"]
    for matcher in loaded.match:
        assert matcher.matches(spec["match"][matcher.claim])


@pytest.mark.parametrize("seconds, loads", [(MAX_DURATION, True), (MAX_DURATION + 1, False)])
def test_the_duration_bound_is_365_days(seconds, loads):
    assert MAX_DURATION == 365 * 86400
    assert isinstance(load(f"kind: target\nname: api\ntype: jwt\nmax_ttl: {seconds}\n"), PolicySet) is loads
