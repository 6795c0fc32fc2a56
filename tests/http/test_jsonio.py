"""broker/http/jsonio.py: orjson encodes the app's JSON answers; every value it would encode
differently from Flask's own provider goes to Flask's provider, so no answer changes."""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from broker.http.jsonio import OrjsonProvider


@dataclasses.dataclass
class _Point:
    x: int


def _apps() -> tuple[Flask, Flask]:
    fast, plain = Flask("fast"), Flask("plain")
    fast.json, plain.json = OrjsonProvider(fast), DefaultJSONProvider(plain)
    for provider in (fast.json, plain.json):
        assert isinstance(provider, DefaultJSONProvider)
        provider.sort_keys = False        # as broker.create_app sets it
    return fast, plain


def _body(response: Any) -> bytes:
    assert isinstance(response, Response)
    return response.get_data()


VALUES = [
    {"b": 1, "a": [True, None, 1.5, "é — \u2028 \U0001f600"], "nested": {"z": {}, "y": []}},
    {"big": 2**70},                                         # beyond orjson's 64 bits
    {"when": datetime.datetime(2026, 12, 4, 10, 0, tzinfo=datetime.UTC)},   # Flask: RFC 822
    {"day": datetime.date(2026, 12, 4)},
    {"id": uuid.UUID(int=7), "amount": decimal.Decimal("1.10"), "point": _Point(3)},
    {1: "int key"},
    [1, "two", {"three": 3}],
]


@pytest.mark.parametrize("value", VALUES)
def test_a_response_is_the_same_json_as_flasks(value) -> None:
    fast, plain = _apps()
    with fast.app_context():
        ours = fast.json.response(value)
    with plain.app_context():
        theirs = plain.json.response(value)
    assert ours.mimetype == theirs.mimetype == "application/json"
    assert _body(ours).endswith(b"\n")
    assert json.loads(_body(ours)) == json.loads(_body(theirs))
    if isinstance(value, dict):           # key order kept (sort_keys False), as in Flask's
        assert list(json.loads(_body(ours))) == list(json.loads(_body(theirs)))


def test_dumps_matches_flask_and_honours_arguments() -> None:
    fast, plain = _apps()
    value = {"b": [1, 2], "a": "é"}
    assert json.loads(fast.json.dumps(value)) == json.loads(plain.json.dumps(value))
    assert fast.json.dumps(value, indent=2) == plain.json.dumps(value, indent=2)   # stdlib path


def test_the_broker_app_answers_with_it(app) -> None:
    assert isinstance(app.json, OrjsonProvider)
    response = app.test_client().get("/.well-known/openid-configuration")
    assert response.status_code == 200 and response.get_json()["issuer"]
