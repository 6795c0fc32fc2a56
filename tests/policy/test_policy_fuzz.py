"""Property: whatever YAML-ish text it is given, the policy loader answers with a policy set or a
:class:`PolicyError` listing problems — never another exception, never a hang.

The documents are built from the schemas' own vocabulary (every key any document kind or target
kind declares, nested blocks included), so most of them get deep into the walker rather than
stopping at "unknown kind"."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.support.fuzz  # noqa: F401 - Hypothesis's caches go to the temporary folder, not the tree
from broker.policy import PolicyError, PolicySet, Problem, documents, load_policy_text
from broker.policy.load import KINDS
from broker.targets.keys import Block, Key, ListOf, MapOf
from broker.targets.registry import KINDS as TARGET_KINDS
from broker.vault.client import AUTH_KEYS, AUTH_METHODS, VAULT_BLOCK_KEYS

#: Well within the deadline even on a loaded machine; a hang is far beyond it.
SLOW = 10.0


def _keys(block: Block, into: set[str]) -> set[str]:
    for name, key in block.keys.items():
        into.add(name)
        spec = key.spec
        while isinstance(spec, (ListOf, MapOf)):
            spec = spec.item if isinstance(spec, ListOf) else spec.value
        if isinstance(spec, Block):
            _keys(spec, into)
    return into


VOCABULARY = sorted(set().union(*(
    _keys(block, set()) for block in (
        documents.ISSUER, documents.CLIENT, documents.HUMAN_IDP, documents.APPROVAL,
        documents.MAY_ACT, documents.DERIVE_ENTRY, documents.policy_block(frozenset(documents.EXTRA_POLICY_KEYS)),
        documents.target_block(None),
        *(Block(kind.policy_keys.keys) for kind in TARGET_KINDS.values()),
    ))) | {"glob", "regex", "x"} | set(VAULT_BLOCK_KEYS) | set().union(*AUTH_KEYS.values()))
#: The keys a target kind's values nest (a ``vault:`` block and its ``auth``, ``connect``).
NESTED = sorted({"method", "auth", "host", "port", "dbname", "sslmode", *VAULT_BLOCK_KEYS,
                 *set().union(*AUTH_KEYS.values())})

WORDS = st.sampled_from([*KINDS, *TARGET_KINDS, "gha", "t", "p", "reports-api", "github-actions",
                         "oidc", "https://x.example", "http://127.0.0.1:1", "15m", "0", "group:dba",
                         "a@b.c", "openid", "delegation", "id_token", "RS256", "HS256", "none",
                         "{sub}", "a..b", "", " ", *AUTH_METHODS, "/dev/null", ".", "kv/data/x#dsn"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), WORDS,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=6)), inner, max_size=5)),
    max_leaves=25)
DOCUMENTS = st.builds(
    lambda kind, body: {"kind": kind, **body} if kind is not None else body,
    st.one_of(st.none(), st.sampled_from(KINDS), SCALARS),
    st.dictionaries(st.sampled_from(VOCABULARY), VALUES, max_size=10))
YAMLISH = st.text(alphabet=st.sampled_from(list("kind: target\n-[]{},&*!|>'\"#%@`?~<=.0123456789ab\t")),
                  max_size=200)


NESTED_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NESTED), inner, max_size=6)),
    max_leaves=20)


AUTH_BLOCKS = st.fixed_dictionaries({}, optional={
    "method": st.one_of(st.sampled_from(AUTH_METHODS), NESTED_VALUES),
    **{k: NESTED_VALUES for k in sorted(set().union(*AUTH_KEYS.values())) if k != "method"}})
VAULT_BLOCKS = st.fixed_dictionaries({}, optional={
    **{k: NESTED_VALUES for k in sorted(VAULT_BLOCK_KEYS)}, "auth": st.one_of(AUTH_BLOCKS, NESTED_VALUES)})


def _target_bodies(kind: str) -> st.SearchStrategy[dict]:
    """Each of the kind's keys present or not, a ``vault`` block shaped like one."""
    keys = TARGET_KINDS[kind].policy_keys.keys
    return st.fixed_dictionaries({}, optional={
        k: st.one_of(VAULT_BLOCKS, NESTED_VALUES) if k == "vault" else st.one_of(WORDS, NESTED_VALUES)
        for k in sorted(keys)})


def _loads_or_reports(text: str, base_dir: Path) -> None:
    started = time.monotonic()
    try:
        result = load_policy_text(text, "fuzz.yaml", base_dir=base_dir)
    except PolicyError as exc:
        assert exc.problems and all(isinstance(p, Problem) for p in exc.problems)
        assert all(p.file == "fuzz.yaml" and p.line >= 0 for p in exc.problems)
    else:
        assert isinstance(result, PolicySet)
    assert time.monotonic() - started < SLOW


FUZZ = settings(max_examples=300, deadline=timedelta(seconds=SLOW * 2), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(DOCUMENTS, min_size=1, max_size=4))
def test_documents_built_from_the_schemas_never_crash_the_loader(tmp_path, docs):
    _loads_or_reports(yaml.safe_dump_all(docs, sort_keys=False), tmp_path)


@FUZZ
@given(YAMLISH)
def test_yamlish_text_never_crashes_the_loader(tmp_path, text):
    _loads_or_reports(text, tmp_path)


@FUZZ
@given(st.sampled_from(sorted(TARGET_KINDS)).flatmap(lambda kind: st.tuples(st.just(kind),
                                                                           _target_bodies(kind))))
def test_target_documents_of_every_kind_never_crash_the_loader(tmp_path, case):
    kind, body = case
    document = {"kind": "target", "name": "t", "type": kind, "max_ttl": "5m", **body}
    _loads_or_reports(yaml.safe_dump(document, sort_keys=False), tmp_path)


def test_the_vocabulary_reaches_nested_blocks():
    assert {"approvers", "subject_tokens", "from", "sslmode", "scram_iterations", "role"} <= set(VOCABULARY)
    assert isinstance(documents.APPROVAL.keys["approvers"], Key)
