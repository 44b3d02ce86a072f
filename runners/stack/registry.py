"""The schema registry service (``python -m runners.registry_server``): spec only.

The server itself (a compact Confluent-compatible registry storing schemas in
the compacted ``[schema_registry] topic`` of Kafka) is
:mod:`runners.registry_server`; Kafka starts first and creates that topic.
Health: ``GET /subjects`` answers 200.
"""

from __future__ import annotations

import sys

import requests

from config.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services"]


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.stack.bind_host
    port = settings.schema_registry.port
    url = f"http://{bind_host}:{port}/subjects"

    def healthy() -> bool:
        return requests.get(url, timeout=2.0).status_code == 200

    return [ServiceSpec(
        name="registry",
        argv=[sys.executable, "-m", "runners.registry_server"],
        ports=(port,),
        healthy=healthy,
        start_timeout_s=60.0,
        stop_timeout_s=15.0,
    )]
