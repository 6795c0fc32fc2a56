"""Ledger events as OCSF 1.1.0 events, for a SIEM (``broker audit export --format ocsf``).

The mapping (documented with its reasons in ``docs/audit.md``):

============================  ==================================  ==========================
ledger event                  OCSF class                          activity
============================  ==================================  ==========================
``mint``                      3002 Authentication (IAM, 3)        1 Logon, status Success
``deny``                      3002 Authentication                 1 Logon, status Failure
``expire``                    3002 Authentication                 2 Logoff
``usage`` with a statement    6005 Datastore Activity (App., 6)   from the command tag
``usage`` without one         6003 API Activity (App., 6)         99 Other (``api.operation``)
``connect`` / ``disconnect``  3002 Authentication (IAM, 3)        1 Logon / 2 Logoff (gateway)
``introspect``                6003 API Activity                   2 Read
``revoke``                    6003 API Activity                   4 Delete
``approval_requested`` …      6003 API Activity                   99 Other
============================  ==================================  ==========================

Every record validates against the official OCSF 1.1.0 schema (the tests check each kind of
event with an offline validator): ``type_name`` is always the caption of ``type_uid`` (a
source-specific name, such as a command tag, goes to ``activity_name`` only, with
``activity_id`` 99); every ``actor`` names a ``user`` (the workload, or the API client); a
statement's ``query_info`` has ``name`` (its command tag) and ``uid`` (the event's hash); the
database is ``Relational`` (``type_id`` 1), PostgreSQL being named in ``unmapped``.

Every record carries the whole ledger event under ``unmapped.ledger`` (with ``seq``,
``prev_hash`` and ``hash``), so a SIEM can still recompute the hash chain from the export;
``metadata.uid`` is the event's hash and ``metadata.sequence`` its ``seq``.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from broker.ledger import Event

OCSF_VERSION = "1.1.0"
PRODUCT = {"name": "nhi-broker", "vendor_name": "nhi-broker"}

_CATEGORY = {3: "Identity & Access Management", 6: "Application Activity"}
_CLASS = {3002: ("Authentication", 3), 6003: ("API Activity", 6), 6005: ("Datastore Activity", 6)}
_ACTIVITY = {
    3002: {1: "Logon", 2: "Logoff"},
    6003: {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
    6005: {1: "Read", 2: "Update", 4: "Query", 5: "Write", 6: "Create", 7: "Delete", 99: "Other"},
}
#: PostgreSQL command tags → Datastore Activity activity_id.
_COMMAND_ACTIVITY = {
    "SELECT": 4, "FETCH": 1, "COPY": 1, "SHOW": 1,
    "INSERT": 5, "MERGE": 2, "UPDATE": 2, "DELETE": 7, "TRUNCATE": 7, "DROP": 7,
    "CREATE": 6,
}
_STATUS = {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"}
_SEVERITY = {1: "Informational", 2: "Low"}
#: OCSF auth_protocol_id 6 is "OAUTH 2.0" (the broker speaks RFC 8693 token exchange).
_AUTH_PROTOCOL = (6, "OAUTH 2.0")


def epoch_ms(ts: str) -> int:
    moment = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _base(event: Event, class_uid: int, activity_id: int, *, status_id: int,
          severity_id: int = 1, activity_name: str | None = None) -> dict[str, Any]:
    class_name, category_uid = _CLASS[class_uid]
    caption = _ACTIVITY[class_uid].get(activity_id, "Other")
    # A source-specific name only where the activity is "Other" (99); type_name is the caption.
    name = activity_name if activity_id == 99 and activity_name else caption
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": dict(PRODUCT),
        "uid": event.hash,
        "sequence": event.seq,
        "logged_time": epoch_ms(event.ts),
        "original_time": event.ts,
        "event_code": event.type,
    }
    run_id = event.run.get("id") if isinstance(event.run, dict) else None
    if run_id is not None:
        metadata["correlation_uid"] = str(run_id)
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": _CATEGORY[category_uid],
        "activity_id": activity_id,
        "activity_name": name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {caption}",
        "time": epoch_ms(event.ts),
        "severity_id": severity_id,
        "severity": _SEVERITY.get(severity_id, "Other"),
        "status_id": status_id,
        "status": _STATUS[status_id],
        "metadata": metadata,
    }


def _workload_user(event: Event) -> dict[str, Any]:
    """The acting workload as an OCSF user: the principal, typed "System" (a non-human)."""
    user: dict[str, Any] = {"name": event.principal or "unknown", "type_id": 3, "type": "System"}
    if event.principal:
        user["uid"] = event.principal
    return user


def _session(event: Event) -> dict[str, Any] | None:
    if not event.credential_id:
        return None
    session: dict[str, Any] = {"uid": event.credential_id, "credential_uid": event.credential_id}
    expires_at = (event.details or {}).get("expires_at")
    if isinstance(expires_at, int):
        session["expiration_time"] = expires_at * 1000
    return session


def _resources(event: Event) -> list[dict[str, Any]]:
    resources = []
    if event.credential_id:
        resources.append({"uid": event.credential_id, "type": "credential",
                          "name": event.credential_id})
    if event.target:
        resources.append({"name": event.target, "type": "target"})
    return resources


def _client_actor(event: Event, details: dict[str, Any]) -> dict[str, Any]:
    """Who called the API: the client (its presented name when it was refused), a person who
    decided an approval or a delegation, the holder of a credential revoking it, else unknown."""
    client = details.get("client")
    if client:
        return {"user": {"name": str(client), "type_id": 99, "type": "client"}}
    person = details.get("approver") or details.get("person") or details.get("granted_by")
    if person:
        return {"user": {"name": str(person), "type_id": 1, "type": "User"}}
    if details.get("holder") and event.principal:
        return {"user": _workload_user(event)}
    return {"user": {"name": "unknown", "type_id": 0, "type": "Unknown"}}


def _src_endpoint(details: dict[str, Any]) -> dict[str, Any]:
    """Where the activity came from: a database client address (``10.0.0.7(53422)`` as
    PostgreSQL logs ``%r``), else the API client's name."""
    import ipaddress

    raw = str(details.get("client_addr") or details.get("client") or "").strip()
    host, _, port = raw.partition("(")
    try:
        endpoint: dict[str, Any] = {"ip": str(ipaddress.ip_address(host.strip("[]")))}
        if port.rstrip(")").isdigit():
            endpoint["port"] = int(port.rstrip(")"))
        return endpoint
    except ValueError:
        return {"name": raw or "unknown"}


def _gateway_login(event: Event, details: dict[str, Any]) -> dict[str, Any]:
    """A login through the gateway (accepted or refused) and its end: 3002 Authentication,
    Logon (1) / Logoff (2), over the PostgreSQL protocol."""
    refused = details.get("result") == "refused"
    out = _base(event, 3002, 1 if event.type == "connect" else 2,
                status_id=2 if refused else 1, severity_id=2 if refused else 1)
    out["user"] = _workload_user(event)
    out["service"] = {"name": str(event.target or details.get("target") or "nhi-broker")}
    out["is_remote"] = True
    out["actor"] = {"user": _workload_user(event)}
    out["src_endpoint"] = _src_endpoint(details)
    if refused:
        out["status_code"] = str(details.get("sqlstate", ""))
        out["status_detail"] = str(details.get("reason", ""))
    return out


def to_ocsf(event: Event) -> dict[str, Any]:
    """One ledger event as one OCSF event (a JSON-ready dict)."""
    details = event.details or {}
    if event.type in ("connect", "disconnect"):
        out = _gateway_login(event, details)
    elif event.type in ("mint", "deny", "expire"):
        out = _authentication(event, details)
    elif event.type == "usage" and details.get("source") != "cloudtrail" and (
            details.get("statement") or details.get("database")):
        # SQL (gateway, database logs); CloudTrail calls are API Activity below
        out = _datastore_activity(event, details)
    else:
        out = _api_activity(event, details)
    out["unmapped"] = {"ledger": event.to_dict()}
    if out["class_uid"] == 6005:
        out["unmapped"]["database_product"] = "PostgreSQL"
    return out


def _authentication(event: Event, details: dict[str, Any]) -> dict[str, Any]:
    """mint, deny, expire: Authentication (3002)."""
    activity = 2 if event.type == "expire" else 1
    status = 2 if event.type == "deny" else 1
    out = _base(event, 3002, activity, status_id=status,
                severity_id=2 if event.type == "deny" else 1)
    out["user"] = _workload_user(event)
    out["auth_protocol_id"], out["auth_protocol"] = _AUTH_PROTOCOL
    target = event.target or details.get("requested_target")
    out["service"] = {"name": str(target or "nhi-broker")}
    out["is_remote"] = True
    actor: dict[str, Any] = {"user": _workload_user(event)}
    issuer = details.get("issuer") or details.get("unverified_issuer")
    if issuer:
        actor["idp"] = {"name": str(issuer)}
    out["actor"] = actor
    session = _session(event)
    if session and event.type != "deny":
        out["session"] = session
    if event.type == "deny":
        out["status_code"] = str(details.get("error", ""))
        out["status_detail"] = str(details.get("reason", ""))
    return out


def _datastore_activity(event: Event, details: dict[str, Any]) -> dict[str, Any]:
    """usage with a statement or a database: Datastore Activity (6005)."""
    tag = str(details.get("command_tag") or "").upper().split(" ")[0]
    activity = _COMMAND_ACTIVITY.get(tag, 99)
    out = _base(event, 6005, activity, status_id=1,
                activity_name=None if activity != 99 else (tag.title() or "Other"))
    out["type_id"], out["type"] = 1, "Database"
    out["database"] = {"name": str(details.get("database") or "unknown"),
                       "type": "Relational", "type_id": 1}
    if details.get("statement"):
        out["query_info"] = {"query_string": str(details["statement"]),
                             "name": tag or "statement", "uid": event.hash}
    out["actor"] = {"user": _workload_user(event), "session": _session(event) or {}}
    out["src_endpoint"] = _src_endpoint(details)
    if isinstance(details.get("duration_ms"), (int, float)):
        out["duration"] = int(details["duration_ms"])
    return out


def _api_activity(event: Event, details: dict[str, Any]) -> dict[str, Any]:
    """Everything else (introspect, revoke, approvals, other usage): API Activity (6003)."""
    refused = details.get("result") == "refused"
    activity, status = _api_activity_status(event, details, refused=refused)
    out = _base(event, 6003, activity, status_id=status, severity_id=2 if refused else 1,
                activity_name=None if activity != 99 else event.type)
    if refused:
        out["status_code"] = str(details.get("error", ""))
        out["status_detail"] = str(details.get("reason", ""))
    operation = (details.get("operation") or details.get("source")
                 if event.type == "usage" else None)
    out["api"] = {"operation": str(operation or event.type),
                  "service": {"name": "nhi-broker"}}
    if event.type == "usage":
        out["actor"] = {"user": _workload_user(event), "session": _session(event) or {}}
    else:
        out["actor"] = _client_actor(event, details)
    out["src_endpoint"] = _src_endpoint(details)
    out["resources"] = _resources(event)
    return out


def _api_activity_status(event: Event, details: dict[str, Any], *, refused: bool) -> tuple[int, int]:
    """``(activity_id, status_id)`` of an API Activity event."""
    if event.type == "introspect":
        return 2, 2 if refused else 1
    if event.type == "revoke" and refused:
        return 4, 2
    if event.type == "revoke":
        return 4, 1 if details.get("result") == "revoked" else 99
    if event.type in ("approved",):
        return 99, 1
    if event.type in ("denied",):
        return 99, 2
    return 99, 1 if event.type == "usage" else 0     # usage without a statement, approval_requested
