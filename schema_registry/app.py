"""Confluent Schema Registry's REST API over a :class:`SchemaRegistry` (Flask).

Routes take subjects as ``<path:...>``: clients send a ``/`` inside a subject
as ``%2F`` (confluent-kafka's client does), which the WSGI layer has already
decoded into ``/`` by the time Flask routes the request. Booleans in query
strings are accepted as ``true``/``True`` (that client sends Python's spelling).
Every reply is ``application/vnd.schemaregistry.v1+json``; errors are
``{"error_code", "message"}``. Endpoints: docs/decisions/0002-schema-registry.md.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request

from schema_registry.service import RegistryError, SchemaRegistry
from schema_registry.store import RegistryStoreError

__all__ = ["CONTENT_TYPE", "create_app"]

_LOGGER = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _flag(name: str) -> bool:
    return request.args.get(name, "false").lower() == "true"


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RegistryError(422, 42200, f"query parameter {name} must be an integer, "
                            f"got {raw!r}") from None


def _paging() -> dict[str, int]:
    return {"offset": _int_arg("offset", 0), "limit": _int_arg("limit", -1)}


def create_app(registry: SchemaRegistry) -> Flask:
    """Flask app exposing ``registry`` over Confluent's REST API."""
    app = Flask(__name__)

    def reply(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload), status=status, content_type=CONTENT_TYPE)

    def body() -> Any:
        data = request.get_json(force=True, silent=True)
        if data is None:
            raise RegistryError(422, 42201, "Invalid schema: request body is not JSON")
        return data

    @app.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError) -> Response:
        return reply({"error_code": exc.error_code, "message": exc.message}, exc.http_status)

    @app.errorhandler(RegistryStoreError)
    def _store_error(exc: RegistryStoreError) -> Response:
        _LOGGER.error("storage failure: %s", exc)
        return reply({"error_code": 50001, "message": f"Error in the backend data store: {exc}"},
                     500)

    @app.errorhandler(404)
    def _not_found(_exc: Exception) -> Response:
        return reply({"error_code": 404, "message": "HTTP 404 Not Found"}, 404)

    @app.errorhandler(405)
    def _not_allowed(_exc: Exception) -> Response:
        return reply({"error_code": 405, "message": "HTTP 405 Method Not Allowed"}, 405)

    @app.get("/")
    def root() -> Response:
        return reply({})

    # -- schemas by id --------------------------------------------------------
    @app.get("/schemas")
    def schemas() -> Response:
        return reply(registry.schemas(request.args.get("subjectPrefix", ""), _flag("deleted"),
                                      _flag("latestOnly"), **_paging()))

    @app.get("/schemas/types")
    def schema_types() -> Response:
        return reply(["AVRO"])

    @app.get("/schemas/ids/<int:schema_id>")
    def schema_by_id(schema_id: int) -> Response:
        return reply({"schema": registry.schema_by_id(schema_id, request.args.get("subject"))})

    @app.get("/schemas/ids/<int:schema_id>/schema")
    def raw_schema_by_id(schema_id: int) -> Response:
        return reply(json.loads(registry.schema_by_id(schema_id, request.args.get("subject"))))

    @app.get("/schemas/ids/<int:schema_id>/subjects")
    def subjects_of_id(schema_id: int) -> Response:
        return reply(registry.subjects_of_id(schema_id, request.args.get("subject"),
                                             _flag("deleted"), **_paging()))

    @app.get("/schemas/ids/<int:schema_id>/versions")
    def versions_of_id(schema_id: int) -> Response:
        return reply(registry.versions_of_id(schema_id, request.args.get("subject"),
                                             _flag("deleted"), **_paging()))

    # -- subjects ---------------------------------------------------------------
    @app.get("/subjects")
    def subjects() -> Response:
        return reply(registry.subjects(_flag("deleted"), _flag("deleted_only"),
                                       request.args.get("subjectPrefix", ""), **_paging()))

    @app.post("/subjects/<path:subject>/versions")
    def register(subject: str) -> Response:
        return reply(registry.register(subject, body()))

    @app.post("/subjects/<path:subject>")
    def lookup(subject: str) -> Response:
        return reply(registry.lookup(subject, body(), deleted=_flag("deleted")))

    @app.get("/subjects/<path:subject>/versions")
    def versions(subject: str) -> Response:
        return reply(registry.versions(subject, _flag("deleted"), _flag("deleted_only"),
                                       **_paging()))

    @app.get("/subjects/<path:subject>/versions/<version>")
    def get_version(subject: str, version: str) -> Response:
        return reply(registry.get_version(subject, version, _flag("deleted")))

    @app.get("/subjects/<path:subject>/versions/<version>/schema")
    def get_version_schema(subject: str, version: str) -> Response:
        described = registry.get_version(subject, version, _flag("deleted"))
        return reply(json.loads(described["schema"]))

    @app.get("/subjects/<path:subject>/versions/<version>/referencedby")
    def referenced_by(subject: str, version: str) -> Response:
        registry.get_version(subject, version, _flag("deleted"))
        return reply([])  # schema references are not supported: nothing refers to anything

    @app.get("/subjects/<path:subject>/metadata")
    def latest_with_metadata(subject: str) -> Response:
        keys, values = request.args.getlist("key"), request.args.getlist("value")
        if len(keys) != len(values):
            raise RegistryError(422, 42200, "metadata query needs as many value= as key=")
        return reply(registry.latest_with_metadata(subject, dict(zip(keys, values, strict=True)),
                                                   _flag("deleted")))

    @app.delete("/subjects/<path:subject>")
    def delete_subject(subject: str) -> Response:
        return reply(registry.delete_subject(subject, permanent=_flag("permanent")))

    @app.delete("/subjects/<path:subject>/versions/<version>")
    def delete_version(subject: str, version: str) -> Response:
        return reply(registry.delete_version(subject, version, permanent=_flag("permanent")))

    # -- compatibility and config ---------------------------------------------------
    @app.post("/compatibility/subjects/<path:subject>/versions/<version>")
    def compatibility_version(subject: str, version: str) -> Response:
        return reply(registry.test_compatibility(subject, version, body(), _flag("verbose")))

    @app.post("/compatibility/subjects/<path:subject>/versions")
    def compatibility_all(subject: str) -> Response:
        return reply(registry.test_compatibility(subject, None, body(), _flag("verbose")))

    @app.get("/config")
    def get_global_config() -> Response:
        return reply(registry.get_config(None, True))

    @app.put("/config")
    def put_global_config() -> Response:
        return reply(registry.set_config(None, body()))

    @app.get("/config/<path:subject>")
    def get_subject_config(subject: str) -> Response:
        return reply(registry.get_config(subject, _flag("defaultToGlobal")))

    @app.put("/config/<path:subject>")
    def put_subject_config(subject: str) -> Response:
        return reply(registry.set_config(subject, body()))

    @app.delete("/config/<path:subject>")
    def delete_subject_config(subject: str) -> Response:
        return reply(registry.delete_config(subject))

    # -- mode: always READWRITE ----------------------------------------------------
    @app.get("/mode")
    def mode() -> Response:
        return reply(registry.get_mode(None, True))

    @app.put("/mode")
    def put_mode() -> Response:
        return reply(registry.set_mode(body()))

    @app.get("/mode/<path:subject>")
    def subject_mode(subject: str) -> Response:
        return reply(registry.get_mode(subject, _flag("defaultToGlobal")))

    @app.put("/mode/<path:subject>")
    def put_subject_mode(subject: str) -> Response:
        return reply(registry.set_mode(body()))

    @app.delete("/mode/<path:subject>")
    def delete_subject_mode(subject: str) -> Response:
        return reply(registry.get_mode(subject, False))  # nothing set: 40409

    @app.get("/contexts")
    def contexts() -> Response:
        return reply(["."])  # the default context only

    return app
