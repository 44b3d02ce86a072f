"""The MQTT -> Kafka bridge service (``python -m runners.mqtt_bridge``); spec only.

The bridge's one port is its Prometheus metrics (``[mqtt] metrics_port``, checked free
before the start; none when 0). It counts as healthy while its process runs and either

* its heartbeat file is fresh: the supervisor starts it with
  ``DCMMS_HEALTH_FILE=<run>/health/bridge`` in its environment; the bridge
  calls :func:`runners.stack.supervisor.write_heartbeat` on that path once
  connected to Mosquitto and Kafka and again at least every 10 seconds (the
  file must be younger than 30 s and newer than the process), or
* failing that, its log shows ``bridge ready`` since this start (weaker: it
  cannot notice a bridge that hangs later; the heartbeat can).
"""

from __future__ import annotations

import sys

from config.settings import Settings
from runners.mqtt_bridge import metrics_port
from runners.stack.spec import ServiceSpec, StackPaths
from runners.stack.supervisor import HEARTBEAT_ENV, heartbeat_healthy, log_says_ready

__all__ = ["services"]

# Logged by runners.mqtt_bridge once it is connected and subscribed.
READY_MARKER = "bridge ready"


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    heartbeat = paths.run_dir / "health" / "bridge"
    pidfile = paths.pidfile("bridge")
    log = paths.log("bridge")
    port = metrics_port(settings)
    return [ServiceSpec(
        name="bridge",
        argv=[sys.executable, "-m", "runners.mqtt_bridge"],
        ports=(port,) if port else (),
        env={HEARTBEAT_ENV: str(heartbeat)},
        healthy=lambda: (heartbeat_healthy(heartbeat, pidfile)
                         or log_says_ready(log, pidfile, READY_MARKER)),
        start_timeout_s=60.0,
        stop_timeout_s=20.0,
    )]
