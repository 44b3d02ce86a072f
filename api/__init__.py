"""The REST API (ingest and query): :func:`create_app` builds the Flask app.

Blueprints are registered from :data:`BLUEPRINT_MODULES`, names of the modules whose
``bp`` :func:`blueprints` maps them to (the console, :mod:`api.console`, registers its own
list).

Settings read (``[api]`` unless noted; optional ones have the default shown):

* ``api_keys`` — ``"key:read+write,key2:read"`` (required)
* ``rate_limit_per_second`` = 1000, ``rate_limit_burst`` = 2000 — per key and per worker
* ``public_docs`` = true — openapi.json and the docs page without a key
* ``questdb_pool_size`` = 4 — PG-wire connections per worker
* ``[questdb] host``, ``pg_port``, ``pg_user``, ``pg_password``; ``http_port`` for the CSV
  export (QuestDB's ``/exp``)
* ``export_timeout_s`` = 60 — longest wait for QuestDB's next bytes of a CSV export
* ``[kafka] bootstrap_servers`` — for /readyz
* ``[pipeline] assets_file`` — for /api/v1/assets
* ``[console] port`` = 8080 — the operator console linked from ``/`` (not served here)

``test_config`` entries override Flask config; besides Flask's own keys it
accepts ``TELEMETRY_STORE`` (an object with the :class:`api.questdb.TelemetryStore`
methods), ``READY_CHECKS`` (name -> callable raising when not ready) and
``ASSETS_FILE`` (a path) and ``ALARM_ACKS`` (an :class:`api.alarm_acks.AlarmAckStore`
stand-in), so tests can replace QuestDB, Kafka and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Flask

from config.settings import Settings, SettingsError, load_settings

__all__ = ["BLUEPRINT_MODULES", "blueprints", "create_app"]

BLUEPRINT_MODULES = ("api.query", "api.ingest", "api.health", "api.openapi", "api.landing",
                     "api.alarm_acks", "api.dead_letters", "api.stream")


def blueprints() -> dict[str, Blueprint]:
    """Every blueprint of the API and the console, by the name of its module."""
    # Imported here, not at the top: `import api` stays free of side effects (see create_app).
    from api import (
        alarm_acks,
        console,
        dead_letters,
        health,
        ingest,
        landing,
        openapi,
        query,
        stream,
    )

    return {module.__name__: module.bp for module in (
        query, ingest, health, openapi, landing, alarm_acks, dead_letters, stream, console)}


def create_app(settings: Settings | None = None,
               test_config: dict[str, Any] | None = None,
               modules: tuple[str, ...] = BLUEPRINT_MODULES) -> Flask:
    """Build the API app from ``settings`` (default: :func:`config.settings.load_settings`).

    ``modules`` are the blueprints registered, by module name (the operator console,
    :mod:`api.console`, builds its app from a different list); an unknown name is a
    ``ValueError``.
    """
    # Imports here keep `import api` free of side effects (prometheus_client reads
    # PROMETHEUS_MULTIPROC_DIR when first imported, so it must come after gunicorn's config).
    from api.alarm_acks import ACKS_EXTENSION, AlarmAckStore
    from api.assets import AssetDirectory
    from api.auth import EXTENSION as AUTH_EXTENSION
    from api.auth import ApiKeyStore, AuthConfigError, AuthState, RateLimiter
    from api.errors import register_error_handlers
    from api.health import READY_CHECKS_EXTENSION, KafkaCheck, init_metrics
    from api.json_provider import OrjsonProvider
    from api.openapi import PUBLIC_DOCS_CONFIG
    from api.query import ASSETS_EXTENSION, STORE_EXTENSION
    from api.questdb import QuestDBClient, QuestDBExporter, TelemetryStore

    settings = settings or load_settings()
    test_config = dict(test_config or {})
    app = Flask(__name__)
    app.json = OrjsonProvider(app)  # keeps column order in rows; fast for large pages
    app.config["DCMMS_SETTINGS"] = settings
    app.config[PUBLIC_DOCS_CONFIG] = settings.api.public_docs
    store = test_config.pop("TELEMETRY_STORE", None)
    alarm_acks = test_config.pop("ALARM_ACKS", None)
    ready_checks = test_config.pop("READY_CHECKS", None)
    assets_file = test_config.pop("ASSETS_FILE", None)
    app.config.update(test_config)

    try:
        keys = ApiKeyStore.from_spec(settings.api.api_keys,
                                     settings.origin("api", "api_keys"))
    except AuthConfigError as exc:
        raise SettingsError(str(exc)) from None
    limiter = RateLimiter(settings.api.rate_limit_per_second,
                          settings.api.rate_limit_burst)
    app.extensions[AUTH_EXTENSION] = AuthState(keys, limiter)

    if store is None:
        client = QuestDBClient(
            host=settings.questdb.host, port=settings.questdb.pg_port,
            user=settings.questdb.pg_user,
            password=settings.questdb.pg_password,
            max_connections=settings.api.questdb_pool_size)
        exporter = QuestDBExporter(
            settings.questdb.host, settings.questdb.http_port,
            read_timeout_s=settings.api.export_timeout_s)
        store = TelemetryStore(client, rollups_enabled=settings.questdb.rollups,
                               exporter=exporter)
        if alarm_acks is None:
            alarm_acks = AlarmAckStore(client)
    app.extensions[STORE_EXTENSION] = store
    if alarm_acks is not None:
        app.extensions[ACKS_EXTENSION] = alarm_acks
    app.extensions[ASSETS_EXTENSION] = AssetDirectory(
        Path(assets_file) if assets_file else settings.pipeline.assets_file)
    if ready_checks is None:
        ready_checks = {"questdb": store.ping,
                        "kafka": KafkaCheck(settings.kafka.bootstrap_servers)}
    app.extensions[READY_CHECKS_EXTENSION] = dict(ready_checks)

    register_error_handlers(app)
    init_metrics(app)
    known = blueprints()
    for name in modules:
        if name not in known:
            raise ValueError(f"unknown blueprint module {name!r}; known: {', '.join(known)}")
        app.register_blueprint(known[name])
    return app
