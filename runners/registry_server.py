"""Compact Confluent-compatible schema registry (Avro): ``python -m runners.registry_server``.

Implements the REST endpoints that confluent-kafka's ``SchemaRegistryClient``,
``AvroSerializer`` and ``AvroDeserializer`` call (register, lookup, fetch by
id, versions, soft delete, compatibility test, config), with Confluent's
error codes. Schemas are stored in a compacted Kafka topic
(:mod:`io_connectors.registry_store`) and replayed at start, so ids survive
restarts. Why a compact implementation and its limits:
docs/decisions/0002-schema-registry.md.

It runs as ONE process: gunicorn with a single worker and several threads
(the state lives in that worker's memory; a second writer would allocate
clashing ids). Settings: [schema_registry] port, compatibility, topic;
[kafka] bootstrap_servers; [stack] bind_host.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from typing import Any

from flask import Flask, Response, request

from io_connectors.registry_store import (
    KafkaRegistryStore,
    RegistryStoreError,
    config_record,
    schema_record,
)
from schemas.compatibility import (
    CompatibilityLevel,
    SchemaParseError,
    canonical_schema,
    check_compatibility,
    parse_schema_text,
)

__all__ = ["RegistryError", "SchemaRegistry", "create_app", "main"]

_LOGGER = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """An error answered as Confluent's ``{"error_code", "message"}``."""

    def __init__(self, http_status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message


def _subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _version_not_found(version: object) -> RegistryError:
    return RegistryError(404, 40402, f"Version {version} not found.")


class SchemaRegistry:
    """Registry operations over a :class:`KafkaRegistryStore` (thread-safe)."""

    def __init__(self, store: KafkaRegistryStore, default_compatibility: str) -> None:
        self.store = store
        self.default_compatibility = CompatibilityLevel(default_compatibility.upper())
        # One lock for everything: writes must allocate ids and versions atomically,
        # and reads are dictionary look-ups, so contention costs nothing measurable.
        self._lock = threading.RLock()

    @property
    def state(self) -> Any:
        return self.store.state

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _parse_body(body: Any) -> tuple[Any, str]:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryError(422, 42201, "Invalid schema: request body needs a 'schema' string")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type != "AVRO":
            raise RegistryError(422, 42201, f"Invalid schema: schemaType {schema_type} is not "
                                "supported by this registry (AVRO only)")
        if body.get("references"):
            raise RegistryError(422, 42201, "Invalid schema: schema references are not supported")
        try:
            parsed = parse_schema_text(body["schema"])
        except SchemaParseError as exc:
            raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None
        return parsed, canonical_schema(parsed)

    def compatibility_for(self, subject: str | None) -> CompatibilityLevel:
        level = self.state.config.get(subject) if subject is not None else None
        return CompatibilityLevel(level or self.state.config.get(None)
                                  or self.default_compatibility)

    def _version(self, subject: str, version: str | int) -> Any:
        live = self.state.live_versions(subject)
        if not live:
            raise _subject_not_found(subject)
        if str(version) in ("latest", "-1"):
            return live[-1]
        try:
            number = int(version)
        except ValueError:
            raise RegistryError(422, 42202, f"The specified version '{version}' is not a valid "
                                "version id. Allowed values are between [1, 2^31-1] and the "
                                "string \"latest\"") from None
        for sv in live:
            if sv.version == number:
                return sv
        raise _version_not_found(number)

    def _describe(self, sv: Any) -> dict[str, Any]:
        return {"subject": sv.subject, "version": sv.version, "id": sv.schema_id,
                "schema": self.state.schemas[sv.schema_id]}

    # -- operations -----------------------------------------------------------
    def register(self, subject: str, body: Any) -> dict[str, Any]:
        parsed, canonical = self._parse_body(body)
        with self._lock:
            live = self.state.live_versions(subject)
            for sv in live:
                if self.state.schemas[sv.schema_id] == canonical:
                    return {"id": sv.schema_id, "subject": subject, "version": sv.version}
            level = self.compatibility_for(subject)
            previous = [json.loads(self.state.schemas[sv.schema_id]) for sv in live]
            problems = check_compatibility(parsed, previous, level)
            if problems:
                raise RegistryError(
                    409, 409, f"Schema being registered is incompatible with an earlier schema "
                    f"for subject \"{subject}\" ({level.value}): " + "; ".join(problems))
            schema_id = self.state.ids_by_schema.get(canonical) or self.state.next_id
            # Versions keep counting past soft-deleted ones, as Confluent's do.
            version = max(self.state.subjects.get(subject, {}), default=0) + 1
            self.store.append([schema_record(subject, version, schema_id, canonical)])
            _LOGGER.info("registered %s version %d as schema id %d", subject, version, schema_id)
            return {"id": schema_id, "subject": subject, "version": version}

    def lookup(self, subject: str, body: Any, deleted: bool = False) -> dict[str, Any]:
        _parsed, canonical = self._parse_body(body)
        with self._lock:
            versions = self.state.subjects.get(subject, {})
            if not any(deleted or not sv.deleted for sv in versions.values()):
                raise _subject_not_found(subject)
            for sv in sorted(versions.values(), key=lambda s: s.version):
                if (deleted or not sv.deleted) and self.state.schemas[sv.schema_id] == canonical:
                    return self._describe(sv)
        raise RegistryError(404, 40403, "Schema not found")

    def schema_by_id(self, schema_id: int) -> str:
        with self._lock:
            text = self.state.schemas.get(schema_id)
        if text is None:
            raise RegistryError(404, 40403, f"Schema {schema_id} not found")
        return text

    def subjects(self, deleted: bool = False) -> list[str]:
        with self._lock:
            return sorted(s for s, vs in self.state.subjects.items()
                          if any(deleted or not sv.deleted for sv in vs.values()))

    def versions(self, subject: str) -> list[int]:
        with self._lock:
            live = self.state.live_versions(subject)
        if not live:
            raise _subject_not_found(subject)
        return [sv.version for sv in live]

    def get_version(self, subject: str, version: str) -> dict[str, Any]:
        with self._lock:
            return self._describe(self._version(subject, version))

    def delete_subject(self, subject: str) -> list[int]:
        with self._lock:
            live = self.state.live_versions(subject)
            if not live:
                raise _subject_not_found(subject)
            self.store.append([schema_record(sv.subject, sv.version, sv.schema_id,
                                             self.state.schemas[sv.schema_id], deleted=True)
                               for sv in live])
            return [sv.version for sv in live]

    def delete_version(self, subject: str, version: str) -> int:
        with self._lock:
            sv = self._version(subject, version)
            self.store.append([schema_record(sv.subject, sv.version, sv.schema_id,
                                             self.state.schemas[sv.schema_id], deleted=True)])
            return sv.version

    def test_compatibility(self, subject: str, version: str | None, body: Any,
                           verbose: bool) -> dict[str, Any]:
        parsed, _canonical = self._parse_body(body)
        with self._lock:
            live = self.state.live_versions(subject)
            level = self.compatibility_for(subject)
            if version is None:
                previous = live  # against all versions the level asks for
            else:
                if not live:
                    # Confluent answers "compatible" for a subject that does not exist yet
                    # only on the all-versions endpoint; a named version must exist.
                    raise _subject_not_found(subject)
                target = self._version(subject, version)
                previous = [sv for sv in live if sv.version <= target.version]
                if not level.name.endswith("_TRANSITIVE"):
                    previous = [target]
            schemas = [json.loads(self.state.schemas[sv.schema_id]) for sv in previous]
        problems = check_compatibility(parsed, schemas, level)
        result: dict[str, Any] = {"is_compatible": not problems}
        if verbose:
            result["messages"] = problems
        return result

    def get_config(self, subject: str | None, default_to_global: bool) -> dict[str, str]:
        with self._lock:
            if subject is not None and subject not in self.state.config and not default_to_global:
                raise RegistryError(404, 40408, f"Subject '{subject}' does not have "
                                    "subject-level compatibility configured")
            return {"compatibilityLevel": self.compatibility_for(subject).value}

    def set_config(self, subject: str | None, body: Any) -> dict[str, str]:
        level = body.get("compatibility") if isinstance(body, dict) else None
        try:
            parsed = CompatibilityLevel(str(level).upper())
        except ValueError:
            raise RegistryError(422, 42203, f"Invalid compatibility level {level!r}; expected "
                                f"one of {[c.value for c in CompatibilityLevel]}") from None
        with self._lock:
            self.store.append([config_record(subject, parsed.value)])
        return {"compatibility": parsed.value}

    def delete_config(self, subject: str | None) -> dict[str, str]:
        with self._lock:
            previous = self.compatibility_for(subject).value
            self.store.append([config_record(subject, None)])
        return {"compatibilityLevel": previous}


def _truthy(name: str) -> bool:
    return request.args.get(name, "false").lower() == "true"


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

    @app.get("/schemas/types")
    def schema_types() -> Response:
        return reply(["AVRO"])

    @app.get("/schemas/ids/<int:schema_id>")
    def schema_by_id(schema_id: int) -> Response:
        return reply({"schema": registry.schema_by_id(schema_id)})

    @app.get("/schemas/ids/<int:schema_id>/schema")
    def raw_schema_by_id(schema_id: int) -> Response:
        return reply(json.loads(registry.schema_by_id(schema_id)))

    @app.get("/subjects")
    def subjects() -> Response:
        return reply(registry.subjects(deleted=_truthy("deleted")))

    @app.post("/subjects/<subject>/versions")
    def register(subject: str) -> Response:
        return reply(registry.register(subject, body()))

    @app.post("/subjects/<subject>")
    def lookup(subject: str) -> Response:
        return reply(registry.lookup(subject, body(), deleted=_truthy("deleted")))

    @app.get("/subjects/<subject>/versions")
    def versions(subject: str) -> Response:
        return reply(registry.versions(subject))

    @app.get("/subjects/<subject>/versions/<version>")
    def get_version(subject: str, version: str) -> Response:
        return reply(registry.get_version(subject, version))

    @app.get("/subjects/<subject>/versions/<version>/schema")
    def get_version_schema(subject: str, version: str) -> Response:
        return reply(json.loads(registry.get_version(subject, version)["schema"]))

    @app.delete("/subjects/<subject>")
    def delete_subject(subject: str) -> Response:
        if _truthy("permanent"):
            raise RegistryError(422, 42206, "Permanent deletion is not supported by this "
                                "registry; soft-deleted versions stay in the _schemas topic")
        return reply(registry.delete_subject(subject))

    @app.delete("/subjects/<subject>/versions/<version>")
    def delete_version(subject: str, version: str) -> Response:
        if _truthy("permanent"):
            raise RegistryError(422, 42206, "Permanent deletion is not supported")
        return reply(registry.delete_version(subject, version))

    @app.post("/compatibility/subjects/<subject>/versions/<version>")
    def compatibility_version(subject: str, version: str) -> Response:
        return reply(registry.test_compatibility(subject, version, body(), _truthy("verbose")))

    @app.post("/compatibility/subjects/<subject>/versions")
    def compatibility_all(subject: str) -> Response:
        return reply(registry.test_compatibility(subject, None, body(), _truthy("verbose")))

    @app.get("/config")
    def get_global_config() -> Response:
        return reply(registry.get_config(None, True))

    @app.put("/config")
    def put_global_config() -> Response:
        return reply(registry.set_config(None, body()))

    @app.get("/config/<subject>")
    def get_subject_config(subject: str) -> Response:
        return reply(registry.get_config(subject, _truthy("defaultToGlobal")))

    @app.put("/config/<subject>")
    def put_subject_config(subject: str) -> Response:
        return reply(registry.set_config(subject, body()))

    @app.delete("/config/<subject>")
    def delete_subject_config(subject: str) -> Response:
        return reply(registry.delete_config(subject))

    @app.get("/mode")
    def mode() -> Response:
        return reply({"mode": "READWRITE"})

    return app


def build_registry(settings: Any) -> SchemaRegistry:
    """Start the store (replaying the topic) and return the registry, from settings."""
    store = KafkaRegistryStore(
        settings.get("kafka", "bootstrap_servers"),
        topic=settings.get("schema_registry", "topic", str, "_schemas"),
        replication_factor=settings.get("schema_registry", "replication_factor", int, 1),
    )
    level = settings.get("schema_registry", "compatibility")
    try:
        CompatibilityLevel(level.upper())
    except ValueError:
        from runners.settings import SettingsError

        raise SettingsError(f"setting {settings.origin('schema_registry', 'compatibility')} "
                            f"must be one of {[c.value for c in CompatibilityLevel]}, "
                            f"got {level!r}") from None
    store.start()
    return SchemaRegistry(store, level)


def main(argv: list[str] | None = None) -> int:
    """Serve the registry with gunicorn: one worker process, several threads."""
    from gunicorn.app.base import BaseApplication

    from runners.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m runners.registry_server",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    settings.check_production()
    host = settings.get("stack", "bind_host")
    port = settings.get("schema_registry", "port", int)

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", 1)  # state is in-process: exactly one worker
            self.cfg.set("threads", args.threads)
            # Replaying the topic happens in the worker before it serves; allow for it.
            self.cfg.set("timeout", 120)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            # The default control socket is one per user ($HOME/.gunicorn/gunicorn.ctl):
            # the API's gunicorn would fight over it.
            self.cfg.set("control_socket_disable", True)

        def load(self) -> Flask:
            # Runs in the worker after fork: Kafka clients must not cross a fork.
            return create_app(build_registry(settings))

    _LOGGER.info("schema registry on %s:%d (Kafka %s)", host, port,
                 settings.get("kafka", "bootstrap_servers"))
    _Gunicorn().run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
