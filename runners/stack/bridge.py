"""The MQTT -> Kafka bridge service (``python -m runners.mqtt_bridge``); spec only.

The bridge has no port, so its health is a heartbeat file: the supervisor
starts it with ``DCMMS_HEALTH_FILE=<run>/health/bridge`` in its environment;
the bridge calls :func:`runners.stack.supervisor.write_heartbeat` on that path
once it is connected to Mosquitto and Kafka, and again at least every 10
seconds while it stays healthy. The service counts as healthy while its process
runs and the file is younger than 30 seconds and newer than the process.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from runners.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths
from runners.stack.supervisor import HEARTBEAT_ENV, heartbeat_healthy

__all__ = ["services"]

_LOGGER = logging.getLogger(__name__)


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    if importlib.util.find_spec("runners.mqtt_bridge") is None:
        # Temporary while the project is assembled: the module is written separately.
        _LOGGER.warning("runners.mqtt_bridge is not there yet; the bridge service is skipped")
        return []
    heartbeat = paths.run_dir / "health" / "bridge"
    pidfile = paths.pidfile("bridge")
    return [ServiceSpec(
        name="bridge",
        argv=[sys.executable, "-m", "runners.mqtt_bridge"],
        env={HEARTBEAT_ENV: str(heartbeat)},
        healthy=lambda: heartbeat_healthy(heartbeat, pidfile),
        start_timeout_s=60.0,
        stop_timeout_s=20.0,
    )]
