"""Where ``broker audit …`` reads from: the local ledger or a remote broker's audit API.

Both sources answer with the same JSON (the remote one is the HTTP API of
``broker/http/api/lineage.py``, the local one calls the same :mod:`broker.audit.views`), so the CLI
renders one shape. The remote client uses only the standard library (``urllib``) and HTTP Basic
client authentication; the secret is never printed or put in an error message.
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

from broker.audit import views
from broker.audit.params import decode_cursor

T = TypeVar("T")


class AuditError(Exception):
    """A refusal or failure, with the exit code the CLI uses."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


NOT_FOUND, BAD_REQUEST, UNREACHABLE, REFUSED = 1, 2, 3, 4


class LocalSource:
    """The ledger at ``BROKER_DATABASE_URL`` (or ``--database-url``), opened read-only in use."""

    def __init__(self, url: str) -> None:
        from broker.ledger import LedgerUnavailable, open_ledger

        try:
            self.ledger = open_ledger(url)
        except LedgerUnavailable as exc:
            raise AuditError(f"ledger unreachable: {exc}", exit_code=UNREACHABLE) from None
        except ValueError as exc:
            raise AuditError(str(exc), exit_code=BAD_REQUEST) from None

    def close(self) -> None:
        self.ledger.close()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from broker.ledger import LedgerUnavailable

        try:
            return fn(self.ledger, *args, **kwargs)
        except views.NotFound as exc:
            raise AuditError(str(exc), exit_code=NOT_FOUND) from None
        except LedgerUnavailable as exc:
            raise AuditError(f"ledger unreachable: {exc}", exit_code=UNREACHABLE) from None
        except ValueError as exc:
            raise AuditError(str(exc), exit_code=BAD_REQUEST) from None

    def lineage(self, credential_id: str, **params: Any) -> dict[str, Any]:
        from broker.common.ids import is_credential_id

        if not is_credential_id(credential_id):
            raise AuditError("malformed credential id", exit_code=BAD_REQUEST)
        return self._call(views.lineage_view, credential_id, **params)

    def run(self, run_id: str, **params: Any) -> dict[str, Any]:
        return self._call(views.run_view, run_id, **params)

    def principal(self, principal: str, *, since: str, until: str, limit: int) -> dict[str, Any]:
        return self._call(views.principal_view, principal, since=since, until=until, limit=limit)

    def events(self, filters: dict[str, Any], *, cursor: str | None, limit: int) -> dict[str, Any]:
        after = self._call(lambda _l: decode_cursor(cursor, filters)) if cursor else 0
        return self._call(lambda ledger: views.events_view(ledger, filters=filters,
                                                           after_seq=after, limit=limit))

    def usage(self, statement: str, *, since: str | None, until: str | None, after: int,
              limit: int) -> dict[str, Any]:
        """What ``GET /v1/usage`` answers, from the same query (``Ledger.find_usage``)."""
        from urllib.parse import urlencode

        from broker.http.api.usage import usage_json

        events = self._call(lambda ledger: ledger.find_usage(
            statement=statement, since=since, until=until, after_seq=after, limit=limit))
        body: dict[str, Any] = {"usage": [usage_json(e) for e in events], "next": None}
        if len(events) == limit:
            query = {k: v for k, v in (("statement", statement), ("since", since),
                                       ("until", until)) if v}
            body["next"] = "/v1/usage?" + urlencode({**query, "after": events[-1].seq,
                                                     "limit": limit})
        return body


class RemoteSource:
    """A broker's audit API at ``base_url``, as a client that ``may: [audit]``."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, *,
                 timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuditError("--url must be an http(s) URL", exit_code=BAD_REQUEST)
        self.base = base_url.rstrip("/")
        token = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        self._auth = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
        self.timeout = timeout

    def close(self) -> None:
        pass

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items()
                                        if v is not None})
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, headers={"Authorization": self._auth,
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read() or b"{}")
            except ValueError:
                body = {}
            error = body.get("error", "error") if isinstance(body, dict) else "error"
            description = body.get("error_description", "") if isinstance(body, dict) else ""
            code = {404: NOT_FOUND, 400: BAD_REQUEST, 401: REFUSED, 403: REFUSED}.get(
                exc.code, UNREACHABLE)
            raise AuditError(f"{exc.code} {error}: {description}".rstrip(": "),
                             exit_code=code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AuditError(f"broker unreachable at {self.base}: {reason}",
                             exit_code=UNREACHABLE) from None

    def lineage(self, credential_id: str, *, max_depth: int, limit: int,
                usage_limit: int) -> dict[str, Any]:
        return self.get(f"/v1/credentials/{quote(credential_id, safe='')}/lineage",
                        {"depth": max_depth, "limit": limit, "usage_limit": usage_limit})

    def run(self, run_id: str, *, max_depth: int, limit: int, usage_limit: int) -> dict[str, Any]:
        return self.get(f"/v1/runs/{quote(run_id, safe='')}",
                        {"depth": max_depth, "limit": limit, "usage_limit": usage_limit})

    def principal(self, principal: str, *, since: str, until: str, limit: int) -> dict[str, Any]:
        return self.get(f"/v1/principals/{quote(principal, safe='')}",
                        {"since": since, "until": until, "limit": limit})

    def events(self, filters: dict[str, Any], *, cursor: str | None, limit: int) -> dict[str, Any]:
        return self.get("/v1/events", {**filters, "cursor": cursor, "limit": limit})

    def usage(self, statement: str, *, since: str | None, until: str | None, after: int,
              limit: int) -> dict[str, Any]:
        return self.get("/v1/usage", {"statement": statement, "since": since, "until": until,
                                      "after": after or None, "limit": limit})


def iter_events(source: LocalSource | RemoteSource, filters: dict[str, Any], *,
                page: int = 1000) -> Iterator[dict[str, Any]]:
    """Every event matching ``filters``, following cursors (memory bounded by ``page``)."""
    cursor: str | None = None
    while True:
        body = source.events(filters, cursor=cursor, limit=page)
        yield from body["events"]
        cursor = body.get("next_cursor")
        if not cursor:
            return
