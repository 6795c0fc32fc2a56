"""CloudTrail → usage events of the broker's AWS sessions: files in AWS's documented record
format (``userIdentity`` with ``accessKeyId``, ``arn``, ``sessionContext.sourceIdentity``) laid
out as S3 delivers them, gzipped and plain, read by ``broker ingest cloudtrail`` (once, and with
``--follow``), found by ``/v1/usage?statement=`` and ``broker audit who --statement``."""
from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from broker.usage.cloudtrail import add_records, ingest_cloudtrail, log_files
from tests.support.oauth import AUDITOR, basic
from tests.support.server import REPO, broker_cli
from tests.targets.aws.conftest import aws_env, broker, gate, make_broker, moto  # noqa: F401 (fixtures)
from tests.targets.aws.test_aws_mint import mint

ACCOUNT = "123456789012"


def record(*, session: str | None, access_key: str | None, source_identity: str | None,
           event_source: str = "s3.amazonaws.com", event_name: str = "GetObject", error: str | None = None,
           role: str = "deploy", at: str = "2026-03-01T10:00:05Z") -> dict:
    """One CloudTrail record of an API call by an assumed-role session (eventVersion 1.09)."""
    identity: dict = {"type": "AssumedRole", "accountId": ACCOUNT}
    if session is not None:
        identity["principalId"] = f"AROA123EXAMPLE123:{session}"
        identity["arn"] = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
    if access_key is not None:
        identity["accessKeyId"] = access_key
    if session is not None:
        identity["sessionContext"] = {
            "sessionIssuer": {"type": "Role", "principalId": "AROA123EXAMPLE123",
                              "arn": f"arn:aws:iam::{ACCOUNT}:role/{role}", "accountId": ACCOUNT, "userName": role},
            "webIdFederationData": {"federatedProvider": f"arn:aws:iam::{ACCOUNT}:oidc-provider/broker.example.com",
                                    "attributes": {}},
            "attributes": {"creationDate": "2026-03-01T10:00:00Z", "mfaAuthenticated": "false"}}
        if source_identity is not None:
            identity["sessionContext"]["sourceIdentity"] = source_identity
    out = {
        "eventVersion": "1.09", "userIdentity": identity, "eventTime": at,
        "eventSource": event_source, "eventName": event_name, "awsRegion": "eu-west-1",
        "sourceIPAddress": "203.0.113.7", "userAgent": "[aws-cli/2.15.0 Python/3.11.6 Linux/6.1]",
        "requestParameters": {"bucketName": "deploy", "key": "app.tar"}, "responseElements": None,
        "requestID": uuid.uuid4().hex.upper()[:16], "eventID": str(uuid.uuid4()), "readOnly": True,
        "resources": [{"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::deploy/app.tar"},
                      {"accountId": ACCOUNT, "type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::deploy"}],
        "eventType": "AwsApiCall", "managementEvent": False, "recipientAccountId": ACCOUNT,
        "eventCategory": "Data"}
    if error:
        out["errorCode"], out["errorMessage"] = error, "Access Denied"
    return out


def deliver(root: Path, records: list[dict], *, gzipped: bool = True, stamp: str = "20260301T1005Z") -> Path:
    """A log file where S3 puts it: AWSLogs/<account>/CloudTrail/<region>/<yyyy>/<mm>/<dd>/."""
    folder = root / "AWSLogs" / ACCOUNT / "CloudTrail" / "eu-west-1" / "2026" / "03" / "01"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{ACCOUNT}_CloudTrail_eu-west-1_{stamp}_{uuid.uuid4().hex[:16]}.json"
    data = json.dumps({"Records": records}).encode()
    path = folder / (name + ".gz" if gzipped else name)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def session_of(broker, dev_issuer) -> tuple[str, str]:
    body = mint(broker, dev_issuer).json()
    return body["credential_id"], body["credential"]["access_key_id"]


def test_calls_of_the_brokers_sessions_become_usage_once(broker, dev_issuer, tmp_path, database_url):
    tmp_path = tmp_path / "trail"
    cid, key = session_of(broker, dev_issuer)
    other_cid, other_key = session_of(broker, dev_issuer)
    deliver(tmp_path, [
        record(session=cid, access_key=key, source_identity=cid),                        # by source identity
        record(session=other_cid, access_key=other_key, source_identity=None,              # by session name
               event_source="sts.amazonaws.com", event_name="GetCallerIdentity"),
        record(session="GitHubActions", access_key="ASIAOTHERSESSION0001", source_identity=None),   # not ours
        {**record(session=None, access_key="AKIAIAMUSER000000001", source_identity=None),
         "userIdentity": {"type": "IAMUser", "userName": "ops", "accessKeyId": "AKIAIAMUSER000000001",
                          "arn": f"arn:aws:iam::{ACCOUNT}:user/ops"}},
    ])
    deliver(tmp_path, [record(session=None, access_key=key, source_identity=None, event_name="PutObject",
                              error="AccessDenied")], gzipped=False, stamp="20260301T1010Z")
    # A digest file is not a log file.
    digest = tmp_path / "AWSLogs" / ACCOUNT / "CloudTrail-Digest" / "eu-west-1" / "2026" / "03" / "01"
    digest.mkdir(parents=True)
    (digest / f"{ACCOUNT}_CloudTrail-Digest_eu-west-1_x_20260301T1100Z.json.gz").write_bytes(gzip.compress(b"{}"))
    assert len(log_files(tmp_path)) == 2

    result = broker_cli("ingest", "cloudtrail", str(tmp_path), "--database-url", database_url, "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["records"], stats["matched"], stats["recorded"], stats["duplicates"]) == (5, 3, 3, 0)

    usage = broker.ledger.usage_for_credential(cid)
    assert [u.details["statement"] for u in usage] == ["s3.amazonaws.com GetObject", "s3.amazonaws.com PutObject"]
    first, denied = usage
    assert first.details["matched_by"] == "source_identity" and denied.details["matched_by"] == "access_key_id"
    assert first.principal == broker.ledger.get_credential(cid).principal
    assert first.run["id"] and first.authorizer["name"] == "deploy"
    assert first.details["at"] == "2026-03-01T10:00:05.000000Z"
    assert first.details["client"] == "203.0.113.7" and first.details["region"] == "eu-west-1"
    assert {r["ARN"] for r in first.details["resources"]} == {"arn:aws:s3:::deploy/app.tar", "arn:aws:s3:::deploy"}
    assert denied.details["error"] == "AccessDenied"
    assert "requestParameters" not in json.dumps(first.details)
    [chained] = broker.ledger.usage_for_credential(other_cid)
    assert chained.details["matched_by"] == "session_name"

    again = json.loads(broker_cli("ingest", "cloudtrail", str(tmp_path), "--database-url", database_url,
                                  "--json").stdout)
    assert (again["recorded"], again["duplicates"]) == (0, 3)              # nothing twice


def test_usage_is_found_by_the_call_like_a_statement(broker, dev_issuer, tmp_path, database_url):
    tmp_path = tmp_path / "trail"
    cid, key = session_of(broker, dev_issuer)
    deliver(tmp_path, [record(session=cid, access_key=key, source_identity=cid)])
    ingest_cloudtrail(broker.ledger, tmp_path)
    hits = requests.get(f"{broker.url}/v1/usage", params={"statement": "GetObject"},
                        headers=basic(*AUDITOR), timeout=10).json()
    [hit] = hits["usage"]
    assert hit["credential_id"] == cid and hit["statement"] == "s3.amazonaws.com GetObject"
    assert hit["kind"] == "api_call" and hit["client"] == "203.0.113.7"
    who = broker_cli("audit", "who", "--statement", "GetObject", "--database-url", database_url, "--json")
    assert who.returncode == 0, who.stderr
    assert [h["credential_id"] for h in json.loads(who.stdout)["usage"]] == [cid]
    table = broker_cli("audit", "who", "--statement", "GetObject", "--database-url", database_url,
                       env={"COLUMNS": "250"})
    assert "s3.amazonaws.com GetObject" in table.stdout


def test_a_source_identity_the_ledger_does_not_know_is_kept_as_unknown(broker, tmp_path):
    stranger = "01jzzzzzzzzzzzzzzzzzzzzzzz"
    stats = add_records(broker.ledger, [record(session=stranger, access_key="ASIASTRANGER00000001",
                                               source_identity=stranger)])
    assert (stats.matched, stats.unknown_credentials) == (1, 1)
    [event] = broker.ledger.usage_for_credential(stranger)
    assert event.details["credential_known"] is False and event.principal is None


def test_a_broken_file_is_reported_not_fatal(broker, dev_issuer, tmp_path):
    tmp_path = tmp_path / "trail"
    cid, key = session_of(broker, dev_issuer)
    deliver(tmp_path, [record(session=cid, access_key=key, source_identity=cid)])
    broken = deliver(tmp_path, [], stamp="20260301T1020Z")
    broken.write_bytes(b"\x1f\x8b not really gzip")
    stats = ingest_cloudtrail(broker.ledger, tmp_path)
    assert stats.recorded == 1 and stats.unreadable == [str(broken)]


def test_follow_picks_up_files_as_they_are_delivered(broker, dev_issuer, tmp_path, database_url):
    tmp_path = tmp_path / "trail"
    cid, key = session_of(broker, dev_issuer)
    deliver(tmp_path, [record(session=cid, access_key=key, source_identity=cid)])
    proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "ingest", "cloudtrail", str(tmp_path), "--follow",
                             "--poll", "0.2", "--database-url", database_url, "--json"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(broker.ledger.usage_for_credential(cid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        deliver(tmp_path, [record(session=cid, access_key=key, source_identity=cid, event_name="PutObject")],
                stamp="20260301T1015Z")
        while len(broker.ledger.usage_for_credential(cid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [u.details["event_name"] for u in broker.ledger.usage_for_credential(cid)] == ["GetObject", "PutObject"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["recorded"] == 2
