"""Entry point of the schema registry: ``python -m runners.registry_server``.

Reads the settings, builds the registry of the :mod:`schema_registry` package
(store: a compacted Kafka topic replayed at start; service: the operations;
app: Confluent's REST API) and serves it with gunicorn. Why a compact
implementation, what it implements and its limits:
docs/decisions/0002-schema-registry.md.

It runs as ONE process: gunicorn with a single worker and several threads
(the state lives in that worker's memory; a second writer would allocate
clashing ids). Settings: [schema_registry] port, compatibility, topic;
[kafka] bootstrap_servers; [stack] bind_host.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from flask import Flask

from schema_registry.app import create_app
from schema_registry.service import SchemaRegistry
from schema_registry.store import KafkaRegistryStore

__all__ = ["build_registry", "main"]

_LOGGER = logging.getLogger(__name__)


def build_registry(settings: Any) -> SchemaRegistry:
    """Start the store (replaying the topic) and return the registry, from settings."""
    store = KafkaRegistryStore(
        settings.kafka.bootstrap_servers,
        topic=settings.schema_registry.topic,
        replication_factor=settings.schema_registry.replication_factor,
    )
    store.start()
    # The level was checked (and upper-cased) when the settings were built.
    return SchemaRegistry(store, settings.schema_registry.compatibility)


def main(argv: list[str] | None = None) -> int:
    """Serve the registry with gunicorn: one worker process, several threads."""
    from gunicorn.app.base import BaseApplication

    from config.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m runners.registry_server",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    settings.check_production()
    host = settings.stack.bind_host
    port = settings.schema_registry.port

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
                 settings.kafka.bootstrap_servers)
    _Gunicorn().run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
