"""Ingest CloudTrail log files into the ledger as ``usage`` events of the broker's AWS sessions.

CloudTrail writes what every AWS session did, outside the workload's reach — the cloud's own
record. This reads its log files (``{"Records": [...]}``, gzipped as S3 delivers them or plain),
one file or a folder searched recursively — the S3 layout
``AWSLogs/<account>/CloudTrail/<region>/<yyyy>/<mm>/<dd>/<account>_CloudTrail_<region>_<time>_<id>.json.gz``
synced to disk (``aws s3 sync``), digest files skipped — and appends one ``usage`` event per
record made with a session the broker minted (``type: aws`` targets), matched by, in order:

1. ``userIdentity.sessionContext.sourceIdentity`` — the credential id the web-identity token set
   (it survives role chaining, so a session chained from the broker's is still linked);
2. the role session name in ``userIdentity.arn`` (``…:assumed-role/<role>/<prefix><credential id>``)
   or ``principalId`` (``AROA…:<session name>``), when the ledger knows that credential;
3. ``userIdentity.accessKeyId``, the access key id the mint recorded (learnt from the records
   matched above and from the ``AssumeRoleWithWebIdentity`` records of the mints themselves,
   else looked up in the ledger).

A usage event's ``details``: ``source`` (``cloudtrail``), ``kind`` (``api_call``), ``statement``
(``<eventSource> <eventName>``, e.g. ``s3.amazonaws.com GetObject`` — what ``/v1/usage?statement=``
and ``broker audit who --statement`` search), ``event_source``, ``event_name``, ``at`` (the
record's ``eventTime``), ``region``, ``client`` (``sourceIPAddress``), ``user_agent``,
``resources`` (type and ARN, at most :data:`MAX_RESOURCES`), ``error`` (``errorCode``),
``error_message``, ``read_only``, ``event_id``, ``request_id``, ``account``, ``role`` (the
assumed-role ARN), ``access_key_id``, ``matched_by``, ``line_key``. Request parameters are not
recorded (they can hold data; the record in CloudTrail has them).

Nothing twice: a record's ``line_key`` is ``cloudtrail:<eventID>`` (AWS's unique id of the
record), and :meth:`Ledger.record_usage` skips keys it holds, so re-reading a folder, or the same
event delivered twice, records it once. ``--follow`` keeps looking for new files (CloudTrail
writes whole files, every ~5 minutes; a file still being copied is retried when it changes).
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from broker.common.ids import is_credential_id
from broker.ledger.events import CredentialRecord, EventDraft

log = logging.getLogger("broker.usage.cloudtrail")

SOURCE = "cloudtrail"
KIND = "aws"
DEFAULT_BATCH = 1000
MAX_RESOURCES = 20
MAX_TEXT = 300
_CACHE_SIZE = 100_000
_CID_SUFFIX = re.compile(r"([0-9a-hjkmnp-tv-z]{26})$")
_ACCESS_KEY = re.compile(r"[A-Z0-9]{16,128}")
_FILE_TIME = re.compile(r"_(\d{8}T\d{4}Z)_")
_EVENT_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
#: details key <- record key, copied as they are (strings clipped to 200 characters)
_COPIED = (("region", "awsRegion"), ("client", "sourceIPAddress"), ("account", "recipientAccountId"),
           ("request_id", "requestID"), ("read_only", "readOnly"), ("event_type", "eventType"))
_RESOURCE_KEYS = ("type", "ARN", "accountId")


@dataclass
class CloudTrailStats:
    files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)   # not gzip/JSON, or not CloudTrail's shape
    records: int = 0                # records read
    matched: int = 0                # … made with the broker's sessions
    recorded: int = 0               # usage events appended
    duplicates: int = 0             # already in the ledger
    unknown_credentials: int = 0    # source identities of credentials the ledger does not know

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _clip(value: Any, limit: int = MAX_TEXT) -> str:
    text = value if type(value) is str else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def event_time(value: Any) -> str | None:
    """``eventTime`` (``2026-03-01T10:00:00Z``) as the ledger's RFC 3339 with microseconds."""
    if not isinstance(value, str):
        return None
    if _EVENT_TIME.fullmatch(value):
        return value[:-1] + ".000000Z"
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def session_name_of(identity: dict[str, Any]) -> str | None:
    """The role session name of an ``AssumedRole`` identity (from its ARN or principal id)."""
    arn = identity.get("arn")
    if isinstance(arn, str) and ":assumed-role/" in arn:
        return arn.rsplit("/", 1)[-1]
    principal = identity.get("principalId")
    if isinstance(principal, str) and ":" in principal:
        return principal.split(":", 1)[1]
    return None


class CloudTrailIngester:
    """Turns CloudTrail records into usage events, ``batch_size`` per ledger transaction."""

    def __init__(self, ledger: Any, *, batch_size: int = DEFAULT_BATCH) -> None:
        self.ledger = ledger
        self.batch_size = max(1, int(batch_size))
        self.stats = CloudTrailStats()
        self._pending: list[tuple[EventDraft, str, str, str | None]] = []
        self._credentials: OrderedDict[str, CredentialRecord | None] = OrderedDict()
        self._keys: OrderedDict[str, str | None] = OrderedDict()      # access key id -> cid

    # -- credentials -----------------------------------------------------------------------
    def _credential(self, credential_id: str) -> CredentialRecord | None:
        cache = self._credentials
        if credential_id in cache:
            cache.move_to_end(credential_id)
            return cache[credential_id]
        record = self.ledger.get_credential(credential_id)
        if record is not None and record.target_type != KIND:
            record = None                  # not an AWS session of the broker's
        cache[credential_id] = record
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        if record is not None and record.details.get("access_key_id"):
            self._learn(str(record.details["access_key_id"]), credential_id)
        return record   # type: ignore[no-any-return]  # the cache holds CredentialRecord | None

    def _learn(self, access_key_id: str, credential_id: str | None) -> None:
        self._keys[access_key_id] = credential_id
        if len(self._keys) > _CACHE_SIZE:
            self._keys.popitem(last=False)

    def _by_access_key(self, access_key_id: str) -> str | None:
        if access_key_id in self._keys:
            return self._keys[access_key_id]
        credential_id = None
        if _ACCESS_KEY.fullmatch(access_key_id):
            # details is canonical JSON (sorted keys, no spaces): an exact, escaped match.
            pattern = f'%"access_key_id":"{access_key_id}"%'
            with self.ledger.unavailable_on_error("cloudtrail access key lookup"):
                rows = self.ledger.read("SELECT credential_id FROM credentials WHERE target_type = %s"
                                        " AND details LIKE %s ORDER BY issued_at DESC LIMIT 1",
                                        (KIND, pattern))
            credential_id = rows[0][0] if rows else None
        self._learn(access_key_id, credential_id)
        return credential_id

    def match(self, record: dict[str, Any]) -> tuple[str, str, CredentialRecord | None] | None:
        """``(credential id, matched_by, ledger record)`` of a record made with one of the
        broker's sessions (the ledger record None: a source identity it does not know)."""
        identity = record.get("userIdentity")
        if not isinstance(identity, dict):
            return None
        context = identity.get("sessionContext")
        source = context.get("sourceIdentity") if isinstance(context, dict) else None
        if isinstance(source, str) and is_credential_id(source):
            return source, "source_identity", self._credential(source)
        if record.get("eventName") == "AssumeRoleWithWebIdentity":
            return self._mint_record(record)
        name = session_name_of(identity)
        if name is not None:
            found = _CID_SUFFIX.search(name)
            if found is None:
                return None                # someone else's session
            record_ = self._credential(found.group(1))
            return (found.group(1), "session_name", record_) if record_ is not None else None
        key = identity.get("accessKeyId")
        if isinstance(key, str) and key:
            credential_id = self._by_access_key(key)
            if credential_id is not None:
                record_ = self._credential(credential_id)
                if record_ is not None:
                    return credential_id, "access_key_id", record_
        return None

    def _mint_record(self, record: dict[str, Any]) -> tuple[str, str, CredentialRecord | None] | None:
        """STS's own record of a mint (``userIdentity`` is the web identity): linked by the
        source identity or session name it asked for; teaches the session's access key id."""
        params = record.get("requestParameters") or {}
        credential_id = None
        for value in (params.get("sourceIdentity"), params.get("roleSessionName")):
            if isinstance(value, str):
                found = _CID_SUFFIX.search(value)
                if found is not None:
                    credential_id = found.group(1)
                    break
        if credential_id is None:
            return None
        known = self._credential(credential_id)
        if known is None:
            return None
        credentials = (record.get("responseElements") or {}).get("credentials") or {}
        if isinstance(credentials.get("accessKeyId"), str):
            self._learn(credentials["accessKeyId"], credential_id)
        return credential_id, "assume_role", known

    # -- records ---------------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> None:  # noqa: C901 - one match rule per branch
        stats = self.stats
        stats.records += 1
        found = self.match(record)
        if found is None:
            return
        credential_id, matched_by, known = found
        event_id = record.get("eventID")
        if not isinstance(event_id, str) or not event_id:
            event_id = "sha256:" + _digest(record)
        key = f"cloudtrail:{event_id}"
        source, name = record.get("eventSource") or "", record.get("eventName") or ""
        statement = f"{source} {name}".strip() or None
        at = event_time(record.get("eventTime"))
        identity = record.get("userIdentity") or {}
        details: dict[str, Any] = {"source": SOURCE, "kind": "api_call", "line_key": key,
                                   "event_source": source, "event_name": name,
                                   "event_id": event_id, "matched_by": matched_by}
        if statement:
            details["statement"] = statement
        if at:
            details["at"] = at
        for out, src in _COPIED:
            value = record.get(src)
            if value is not None:
                details[out] = value if type(value) is bool or (type(value) is str and len(value) <= 200) \
                    else _clip(value, 200)
        if record.get("userAgent"):
            details["user_agent"] = _clip(record["userAgent"], 200)
        if record.get("errorCode"):
            details["error"] = _clip(record["errorCode"], 200)
            if record.get("errorMessage"):
                details["error_message"] = _clip(record["errorMessage"])
        if identity.get("arn"):
            details["role"] = _clip(identity["arn"], 200)
        if identity.get("accessKeyId"):
            details["access_key_id"] = _clip(identity["accessKeyId"], 128)
        resources = record.get("resources")
        if isinstance(resources, list) and resources:
            details["resources"] = [{k: _clip(r[k], 512) for k in _RESOURCE_KEYS if k in r}
                                    for r in resources[:MAX_RESOURCES] if isinstance(r, dict)]
        stats.matched += 1
        if known is None:
            stats.unknown_credentials += 1
            details["credential_known"] = False
            draft = EventDraft(type="usage", credential_id=credential_id, details=details)
        else:
            draft = EventDraft(type="usage", credential_id=credential_id, parent_id=known.parent_id,
                               principal=known.principal, run=known.run, authorizer=known.authorizer,
                               target=known.target, details=details)
        self._pending.append((draft, key, at or "", statement))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> int:
        if not self._pending:
            return 0
        pending, self._pending = self._pending, []
        events = self.ledger.record_usage(pending)
        self.stats.recorded += len(events)
        self.stats.duplicates += len(pending) - len(events)
        return len(events)


def _digest(record: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- files

class NotCloudTrail(ValueError):
    """A file that is not (or not yet, while it is being copied) a CloudTrail log file."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of one log file, gzipped (by its magic bytes, whatever its name) or plain."""
    raw = Path(path).read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        document = json.loads(raw)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise NotCloudTrail(f"{path}: {type(exc).__name__}") from None
    records = document.get("Records") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise NotCloudTrail(f"{path}: no 'Records' list")
    return [r for r in records if isinstance(r, dict)]


def _is_log_file(path: Path) -> bool:
    name = path.name
    return (name.endswith((".json", ".json.gz", ".gz")) and not name.startswith(".")
            and "CloudTrail-Digest" not in path.parts and "Digest" not in name)


def _order(path: Path) -> tuple[str, str]:
    found = _FILE_TIME.search(path.name)
    return (found.group(1) if found else "", str(path))


def log_files(path: str | Path) -> list[Path]:
    """A file itself, or the log files under a folder (recursively), oldest delivery first."""
    root = Path(path)
    if root.is_file():
        return [root]
    return sorted((p for p in root.rglob("*") if p.is_file() and _is_log_file(p)), key=_order)


def follow_files(path: str | Path, *, follow: bool, poll: float, should_stop: Callable[[], bool]
                 ) -> Iterator[Path | None]:
    """Each log file once (a file that changes is read again: the ledger dedupes), then with
    ``follow`` new ones as they come, yielding None whenever there is nothing new."""
    seen: dict[Path, tuple[int, int]] = {}
    while True:
        fresh = False
        for file in log_files(path):
            try:
                st = file.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            if seen.get(file) == stamp:
                continue
            seen[file] = stamp
            fresh = True
            yield file
        if not follow or should_stop():
            return
        if not fresh:
            yield None
            time.sleep(poll)


def ingest_cloudtrail(ledger: Any, path: str | Path, *, follow: bool = False, poll: float = 5.0,
                      batch_size: int = DEFAULT_BATCH, should_stop: Callable[[], bool] = lambda: False,
                      on_batch: Callable[[CloudTrailStats], None] | None = None) -> CloudTrailStats:
    """Read CloudTrail log files at ``path`` and record the usage of the broker's sessions."""
    ingester = CloudTrailIngester(ledger, batch_size=batch_size)
    stats = ingester.stats
    retry: set[Path] = set()
    for file in follow_files(path, follow=follow, poll=poll, should_stop=should_stop):
        if file is None:
            if ingester.flush() and on_batch is not None:
                on_batch(stats)
            continue
        try:
            records = read_records(file)
        except NotCloudTrail as exc:
            if follow:                    # maybe still being copied: read again when it changes
                retry.add(file)
                log.info("not (yet) a CloudTrail log file: %s", exc)
            else:
                stats.unreadable.append(str(file))
                log.warning("not a CloudTrail log file: %s", exc)
            continue
        except OSError as exc:
            stats.unreadable.append(str(file))
            log.warning("cannot read %s: %s", file, exc.strerror or type(exc).__name__)
            continue
        retry.discard(file)
        stats.files.append(str(file))
        for record in records:
            ingester.add(record)
        if on_batch is not None and ingester.flush():
            on_batch(stats)
    ingester.flush()
    stats.unreadable.extend(str(p) for p in sorted(retry) if str(p) not in stats.unreadable)
    return stats


def add_records(ledger: Any, records: Iterable[dict[str, Any]], *, batch_size: int = DEFAULT_BATCH
                ) -> CloudTrailStats:
    """Record the usage in already-parsed records (e.g. from EventBridge or CloudTrail Lake)."""
    ingester = CloudTrailIngester(ledger, batch_size=batch_size)
    for record in records:
        ingester.add(record)
    ingester.flush()
    return ingester.stats


__all__ = ["CloudTrailIngester", "CloudTrailStats", "NotCloudTrail", "add_records", "event_time",
           "ingest_cloudtrail", "log_files", "read_records", "session_name_of"]
