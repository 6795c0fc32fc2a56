"""Flask's JSON responses encoded with orjson.

The lineage and run views answer hundreds of kilobytes of JSON; the standard library's
encoder took about 6 ms of a lineage answer (101 nodes, 441 KB), orjson takes 0.5 ms
(``bench/lineage.py``). The output is the same JSON value: keys in insertion order (the app's
``sort_keys = False``), UTF-8 text instead of ``\\u`` escapes (both are RFC 8259 JSON).
Anything orjson would encode differently from Flask's provider — a date, a dataclass, a UUID, a
decimal, an integer beyond 64 bits, a non-string key — goes to Flask's own provider instead,
so no answer changes shape. Not used for the hash chain: canonical JSON stays
:func:`broker.common.canonical.canonical_json`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from flask.json.provider import DefaultJSONProvider

if TYPE_CHECKING:
    from werkzeug.sansio.response import Response

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_RESPONSE_OPTIONS = _OPTIONS | orjson.OPT_APPEND_NEWLINE    # Flask's responses end in "\n"


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)      # Flask's provider decides (or refuses) instead


class OrjsonProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if not kwargs and not self.sort_keys:
            try:
                return orjson.dumps(obj, default=_refuse, option=_OPTIONS).decode()
            except TypeError:
                pass
        return super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        pretty = self.compact is False or (self.compact is None and self._app.debug)
        if not self.sort_keys and not pretty:
            try:
                body = orjson.dumps(obj, default=_refuse, option=_RESPONSE_OPTIONS).decode()
            except TypeError:
                pass
            else:
                return self._app.response_class(body, mimetype=self.mimetype)
        return super().response(*args, **kwargs)
