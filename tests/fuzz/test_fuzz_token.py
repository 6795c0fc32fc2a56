"""Property: ``POST /token`` (RFC 6749 §5 / RFC 8693 §2) answers any request — any form fields,
repeated, huge, with NULs, non-UTF-8 bytes or broken percent-encoding, any content type — with
a success or a clean RFC 6749 JSON error: a 4xx status, ``application/json``, an ``error`` from
the RFC 6749/8693/8628 set, no stack trace. Never a 500, never an HTML page.

Against the real app (SQLite ledger, the dev issuer over real HTTP, the standard policy set of
tests/support/policies.py); the parser (:func:`parse_exchange_request`) and the scope and
target readers are also fuzzed directly, with a round trip for well-formed requests."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote_from_bytes, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.exceptions import RequestEntityTooLarge

from broker import errors
from broker.exchange.request import ACTOR_TOKEN_TYPES, SUBJECT_TOKEN_TYPES, ExchangeRequest
from broker.http.api.token import MAX_SCOPE_TEXT, MAX_SCOPES, parse_exchange_request, requested_scopes
from tests.support.fuzz import fuzz, hostile_bytes, hostile_text, no_hang
from tests.support.oauth import AUDIENCE, GRANT, JWT_TYPE

#: RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8628 §3.5 (approval polls), RFC 6750 — what the broker
#: may answer a token request with. ``server_error`` is not here: a 500 fails the property.
ERRORS = {"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
          "unsupported_grant_type", "invalid_scope", "invalid_target", "access_denied",
          "unsupported_token_type", "temporarily_unavailable", "authorization_pending", "slow_down",
          "expired_token"}
STATUSES = {200, 400, 401, 403, 413, 415, 429}
REFUSAL_KEYS = {"error", "error_description", "reason", "event_id"}

FIELDS = ["grant_type", "subject_token", "subject_token_type", "scope", "resource", "audience",
          "requested_token_type", "actor_token", "actor_token_type", "ttl", "approval_id"]
KNOWN_VALUES = [GRANT, JWT_TYPE, *SUBJECT_TOKEN_TYPES, *ACTOR_TOKEN_TYPES, "reports-api", "billing-api",
                "https://reports.internal", "http://[::1", "reports:read", "reports:read reports:write",
                "90s", "99999999999999999999d", "0", "-1", "\u0663\u0663", "a.b.c", "eyJ.eyJ.x", "", " ",
                "urn:ietf:params:oauth:token-type:access_token", "apr_0123456789"]


def assert_clean(response: Any) -> dict[str, Any]:
    status = response.status_code
    text = response.get_data(as_text=True)
    assert status in STATUSES, f"{status}: {text[:300]}"
    assert response.mimetype == "application/json", text[:300]
    assert "Traceback" not in text and "<html" not in text.lower()
    body = response.get_json()
    assert isinstance(body, dict)
    if status == 200:
        assert {"access_token", "issued_token_type", "token_type", "expires_in"} <= set(body)
    else:
        assert body.get("error") in ERRORS, body
        assert set(body) <= REFUSAL_KEYS, body
    return body


# ------------------------------------------------------------------ bodies

VALUE_TEXT = st.one_of(st.sampled_from(KNOWN_VALUES), hostile_text(40),
                       st.integers(1000, 80_000).map(lambda n: "a" * n))


#: Values near the shape each field expects, where parsers break (URI brackets, digit runs…).
_URI_PART = st.lists(st.sampled_from(list("[]:%@/?#a1.-") + ["::1", "%zz", "\x00"]), max_size=8).map("".join)
URI_ISH = st.tuples(st.sampled_from(["https", "http", "urn", "a", ""]), st.sampled_from(["://", "://", ":", ""]),
                    st.sampled_from(["", "[", "]", "[::1", "::1]", "[::1]", "[v1.x]", "u@["]), _URI_PART,
                    st.sampled_from(["", "/", "/x?y", "#f"])).map("".join)
NEAR_VALUES = {
    "resource": URI_ISH, "audience": st.one_of(URI_ISH, st.from_regex(r"[A-Za-z0-9._-]{1,130}", fullmatch=True)),
    "ttl": st.tuples(st.integers(-1, 10**25), st.sampled_from(["", "s", "m", "h", "d", "x", " "])).map(
        lambda t: f"{t[0]}{t[1]}"),
    "scope": st.lists(st.text(alphabet=st.sampled_from(list("ab:\"\\ \x7f\x00\u00e9")), max_size=6),
                      max_size=70).map(" ".join),
    "approval_id": st.text(alphabet=st.sampled_from(list("a_0-\u0663\u00e9")), max_size=70),
}


def near_values(field: str) -> st.SearchStrategy[str]:
    return st.one_of(NEAR_VALUES.get(field, VALUE_TEXT), VALUE_TEXT)


def _encoded(text: str) -> st.SearchStrategy[bytes]:
    """``text`` form-encoded properly, or its raw UTF-8 bytes as they are."""
    raw = text.encode("utf-8")
    return st.sampled_from([quote_plus(text).encode(), quote_from_bytes(raw).encode(), raw])


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    """Fields (known names mostly, in any order, some repeated) whose names and values are
    encoded well or badly, with bare garbage bytes between them now and then."""
    pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), hostile_text(8)), VALUE_TEXT),
                          max_size=10))
    parts: list[bytes] = []
    for name, value in pairs:
        parts.append(draw(_encoded(name)) + b"=" + draw(_encoded(value)))
        if draw(st.integers(0, 9)) == 0:
            parts.append(draw(hostile_bytes(16)))
    return b"&".join(parts)


FORM = "application/x-www-form-urlencoded"
CONTENT_TYPES = st.one_of(
    st.sampled_from([FORM, FORM + "; charset=utf-8", FORM + "; charset=latin-1", FORM + "; charset=bogus",
                     "APPLICATION/X-WWW-FORM-URLENCODED", "application/json", "multipart/form-data",
                     "multipart/form-data; boundary=x", "text/plain", "text/html", "", "*/*", ";", "a/b;c=\"",
                     "application/x-www-form-urlencoded\x00"]),
    hostile_text(30).map(lambda t: t.replace("\n", "").replace("\r", "")))


@fuzz(150)
@given(body=form_bodies(), query=st.sampled_from(["", "", "", "?scope=x", "?%zz", "?a=\xff"]))
def test_any_form_is_answered_with_a_clean_oauth_response(token_app, body, query):
    client = token_app.test_client()
    with no_hang("POST /token"):
        assert_clean(client.post("/token" + query, data=body, content_type=FORM))


@fuzz(100)
@given(body=st.one_of(form_bodies(), hostile_bytes(200), st.just(b'{"grant_type": "x"}')),
       content_type=CONTENT_TYPES)
def test_any_content_type_is_answered_with_a_clean_oauth_response(token_app, body, content_type):
    client = token_app.test_client()
    assert_clean(client.post("/token", data=body, headers={"Content-Type": content_type}))


@fuzz(30)
@given(size=st.integers(64 * 1024, 3 * 64 * 1024), field=st.sampled_from(FIELDS))
def test_a_body_over_the_limit_is_413(token_app, size, field):
    client = token_app.test_client()
    body = assert_clean(client.post("/token", data=f"{field}=" + "a" * size, content_type=FORM))
    assert body["error"] == "invalid_request"


# ------------------------------------------------------------------ a real request, one field changed

@fuzz(60)
@given(data=st.data(), change=st.sampled_from(["replace", "repeat", "drop", "add"]),
       field=st.sampled_from(FIELDS))
def test_a_valid_request_with_one_field_changed_is_answered_cleanly(token_app, dev_issuer, data, change, field):
    form = {"grant_type": GRANT, "subject_token": dev_issuer.mint_github(audience=AUDIENCE),
            "subject_token_type": JWT_TYPE, "audience": "reports-api", "scope": "reports:read"}
    pairs = list(form.items())
    value = data.draw(near_values(field))
    if change == "replace":
        pairs = [(k, value if k == field else v) for k, v in pairs]
    elif change == "repeat":
        pairs.append((field, form.get(field, value)))
    elif change == "drop":
        pairs = [(k, v) for k, v in pairs if k != field]
    else:
        pairs.append((field, value))
    body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)
    answer = assert_clean(token_app.test_client().post("/token", data=body, content_type=FORM))
    if change == "repeat" and field in form:        # RFC 6749 §3.2; several targets: RFC 8693 §2.2.2
        assert answer["error"] == ("invalid_target" if field == "audience" else "invalid_request")


@fuzz(250)
@given(data=st.data(), field=st.sampled_from(["resource", "audience", "ttl", "scope", "approval_id",
                                              "requested_token_type", "actor_token_type"]))
def test_any_value_of_each_parameter_in_a_valid_request_is_answered_cleanly(token_app, dev_issuer, data, field):
    """The parameters read after the grant and subject checks, each set to values near its
    shape: only a request valid up to there reaches their parsers."""
    form = {"grant_type": GRANT, "subject_token": dev_issuer.mint_github(audience=AUDIENCE),
            "subject_token_type": JWT_TYPE, "audience": "reports-api", "scope": "reports:read",
            field: data.draw(near_values(field))}
    if field == "resource":
        del form["audience"]
    assert_clean(token_app.test_client().post("/token", data=form))


def test_the_unchanged_request_mints(token_app, dev_issuer):
    """The baseline of the property above: without a change, the request succeeds."""
    form = {"grant_type": GRANT, "subject_token": dev_issuer.mint_github(audience=AUDIENCE),
            "subject_token_type": JWT_TYPE, "audience": "reports-api", "scope": "reports:read"}
    body = assert_clean(token_app.test_client().post("/token", data=form))
    assert body["scope"] == "reports:read"


# ------------------------------------------------------------------ the parser itself

def _parse(app: Any, body: bytes) -> ExchangeRequest | errors.BrokerError | RequestEntityTooLarge:
    """The parsed request, or the refusal: a domain error (rendered as RFC 6749 JSON by
    broker/http/errors.py) or werkzeug's 413 for a body over ``MAX_CONTENT_LENGTH``."""
    with app.test_request_context("/token", method="POST", data=body, content_type=FORM):
        try:
            return parse_exchange_request()
        except errors.BrokerError as refusal:                 # anything else fails the test
            assert refusal.error in ERRORS, refusal.error
            return refusal
        except RequestEntityTooLarge as too_large:
            assert len(body) > app.config["MAX_CONTENT_LENGTH"]
            return too_large


@fuzz(200)
@given(body=form_bodies())
def test_the_parser_returns_a_request_or_raises_a_broker_error(token_app, body):
    _parse(token_app, body)


SCOPE_TOKEN = st.from_regex(r"[\x21\x23-\x5b\x5d-\x7e]{1,15}", fullmatch=True)


@fuzz(100)
@given(subject=st.from_regex(r"[A-Za-z0-9._~-]{1,60}", fullmatch=True),
       subject_type=st.sampled_from(sorted(SUBJECT_TOKEN_TYPES)),
       target=st.sampled_from(["reports-api", "billing-api", "no-such-target"]),
       scopes=st.lists(SCOPE_TOKEN, min_size=1, max_size=5, unique=True),
       ttl=st.one_of(st.none(), st.integers(1, 10**6)))
def test_a_well_formed_request_parses_to_its_fields(token_app, subject, subject_type, target, scopes, ttl):
    fields = {"grant_type": GRANT, "subject_token": subject, "subject_token_type": subject_type,
              "audience": target, "scope": " ".join(scopes)}
    if ttl is not None:
        fields["ttl"] = str(ttl)
    parsed = _parse(token_app, "&".join(f"{k}={quote_plus(v)}" for k, v in fields.items()).encode())
    assert isinstance(parsed, ExchangeRequest), parsed
    assert (parsed.subject_token, parsed.subject_token_type, parsed.target) == (subject, subject_type, target)
    assert parsed.scopes == tuple(scopes) and parsed.ttl == ttl
    assert parsed.actor_token is None and parsed.approval_id is None


@fuzz(200)
@given(raw=st.one_of(hostile_text(60), st.lists(SCOPE_TOKEN, max_size=80).map(" ".join),
                     st.integers(MAX_SCOPE_TEXT - 2, MAX_SCOPE_TEXT + 2).map(lambda n: "s " * (n // 2))))
def test_requested_scopes_are_scope_tokens_or_invalid_scope(raw):
    try:
        scopes = requested_scopes(raw)
    except errors.ScopeRefused as refusal:
        assert refusal.error == "invalid_scope"
        return
    assert scopes is not None and 0 < len(scopes) <= MAX_SCOPES and len(raw) <= MAX_SCOPE_TEXT
    assert list(scopes) == list(dict.fromkeys(s for s in raw.split(" ") if s))


@pytest.mark.parametrize("resource", ["http://[::1", "https://[", "a://[::1]x]"])
def test_a_resource_urlsplit_cannot_read_is_invalid_target(token_app, resource):
    body = f"grant_type={quote_plus(GRANT)}&subject_token=a.b.c&subject_token_type={quote_plus(JWT_TYPE)}" \
           f"&resource={quote_plus(resource)}".encode()
    refusal = _parse(token_app, body)
    assert isinstance(refusal, errors.BrokerError) and refusal.error == "invalid_target"
