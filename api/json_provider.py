"""Fast JSON responses with orjson (pages of thousands of rows are the API's hot path).

Only serialisation changes: request bodies are still parsed by Flask's default
provider (the standard library), so what the ingest accepts is unchanged.
Non-finite floats become ``null`` (as valid JSON requires).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

__all__ = ["OrjsonProvider"]

_LOGGER = logging.getLogger(__name__)


class OrjsonProvider(DefaultJSONProvider):
    """Flask JSON provider whose ``dumps``/``response`` use orjson; ``loads`` is inherited."""

    def _default(self, obj: Any) -> Any:
        return DefaultJSONProvider.default(obj)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=self._default).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, default=self._default),
                                        mimetype=self.mimetype)
