"""JSON errors for every API route: ``{"code", "message", "details"}``.

Views raise :class:`ApiError` (or :class:`BadParameter` for a request value
that fails validation); :func:`register_error_handlers` turns those, Werkzeug's
HTTP errors (404, 405, 413, 415, ...) and any unexpected exception into JSON.
An unexpected exception is a bug: it is logged with its traceback and answered
with a 500 that says nothing about internals.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

__all__ = [
    "ApiError",
    "BadParameter",
    "ServiceUnavailable",
    "error_response",
    "register_error_handlers",
]

_LOGGER = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and details."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class BadParameter(ApiError):
    """A request parameter is invalid: 400 whose details name the parameter."""

    def __init__(self, parameter: str, message: str, **details: Any) -> None:
        super().__init__(400, "bad_parameter", f"{parameter}: {message}",
                         {"parameter": parameter, **details})
        self.parameter = parameter


class ServiceUnavailable(ApiError):
    """A dependency (QuestDB, Kafka) is unreachable: 503 with a Retry-After."""

    def __init__(self, message: str, retry_after: int = 5, **details: Any) -> None:
        super().__init__(503, "service_unavailable", message, details,
                         {"Retry-After": str(retry_after)})


def error_response(status: int, code: str, message: str,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """The JSON error body every part of the API answers with."""
    response = jsonify({"code": code, "message": message, "details": details or {}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _http_code(exc: HTTPException) -> str:
    # "Method Not Allowed" -> "method_not_allowed": stable and readable.
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    """Make every error of ``app`` a JSON error body."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        headers = {}
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return error_response(exc.code or 500, _http_code(exc),
                              exc.description or exc.name, {}, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug, never a consequence of bad input: log it in full, reveal nothing.
        _LOGGER.exception("unhandled error while serving request")
        return error_response(500, "internal_error", "internal server error")
