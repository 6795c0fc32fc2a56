"""The pure parts of the aws kind: session tags, the deny document, the error mapping."""
from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from broker import errors
from broker.targets.aws import aws_error
from broker.targets.aws.claims import authorizer_tag, render_tag, session_tags, tag_value
from broker.targets.aws.denylist import (
    BUCKET_SECONDS,
    SID_PREFIX,
    DenyListFull,
    denied,
    parse_document,
    with_denied,
)


def test_tag_values_are_made_acceptable_to_aws():
    assert tag_value("feature/x,y;z") == "feature/x_y_z"
    assert len(tag_value("v" * 400)) == 256


@pytest.mark.parametrize("authorizer,expected", [
    ({"type": "policy", "name": "deploy", "digest": "sha256:ab"}, "policy:deploy"),
    ({"type": "human", "approval_id": "ap_1", "approvers": ["a@x"]}, "human:ap_1"),
    ({"type": "derive", "name": "deploy", "rule": "x"}, "derive:deploy"),
    ({"type": "delegation", "grant_id": "dg_1", "granted_by": "a@x"}, "delegation:dg_1"),
])
def test_the_authorizer_tag(authorizer, expected):
    assert authorizer_tag(authorizer) == expected


def test_a_tag_naming_an_absent_run_field_is_left_out():
    assert render_tag("{run.ref}", run={}, principal="p", target="t") is None
    tags = session_tags(credential_id="c" * 26, principal="p", run={"id": 7, "ref": "refs/heads/main"},
                        authorizer={"type": "human", "approval_id": "a1", "policy": {"digest": "sha256:9"}},
                        target="t", configured={"ref": "{run.ref}", "pr": "{run.pr}", "who": "{principal}@{target}"})
    assert tags == {"credential_id": "c" * 26, "run_id": "7", "authorizer": "human:a1",
                    "policy_digest": "sha256:9", "ref": "refs/heads/main", "who": "p@t"}


def test_the_deny_document_groups_by_expiry_and_prunes():
    now = 10 * BUCKET_SECONDS
    document = parse_document(None)
    document, pruned = with_denied(document, "a" * 26, expires_at=now + 100, now=now)
    document, _ = with_denied(document, "b" * 26, expires_at=now + 200, now=now)     # same bucket
    document, _ = with_denied(document, "c" * 26, expires_at=now + 5000, now=now)
    assert [s["Sid"] for s in document["Statement"]] == [f"{SID_PREFIX}{11 * BUCKET_SECONDS}",
                                                         f"{SID_PREFIX}{16 * BUCKET_SECONDS}"]
    assert denied(document) == {"a" * 26, "b" * 26, "c" * 26}
    later, pruned = with_denied(document, "d" * 26, expires_at=now + 9000, now=now + 2 * BUCKET_SECONDS)
    assert pruned == 2 and denied(later) == {"c" * 26, "d" * 26}
    again, _ = with_denied(later, "d" * 26, expires_at=now + 9000, now=now + 2 * BUCKET_SECONDS)
    assert again == later                                # idempotent


def test_a_deny_document_iam_would_not_take_is_refused():
    document = parse_document(json.dumps({"Statement": [{"Sid": "Big", "Effect": "Deny", "Action": "x" * 10300,
                                                         "Resource": "*"}]}))
    with pytest.raises(DenyListFull):
        with_denied(document, "a" * 26, expires_at=2000, now=1000)


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "token eyJhbGc.eyJzdWIi.sig was bad"},
                        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "r-1"}}, "AssumeRoleWithWebIdentity")


@pytest.mark.parametrize("exc,kind", [
    (_client_error("AccessDenied", 403), errors.BackendMisconfigured),
    (_client_error("InvalidIdentityToken", 400), errors.BackendMisconfigured),
    (_client_error("Throttling", 400), errors.BackendUnavailable),
    (_client_error("IDPCommunicationError", 400), errors.BackendUnavailable),
    (_client_error("Whatever", 503), errors.BackendUnavailable),
    (EndpointConnectionError(endpoint_url="http://x"), errors.BackendUnavailable),
])
def test_aws_errors_map_to_domain_errors_without_tokens(exc, kind):
    mapped = aws_error(exc, call="AssumeRoleWithWebIdentity", target="t")
    assert type(mapped) is kind
    assert "eyJ" not in mapped.detail and "eyJ" not in mapped.description
