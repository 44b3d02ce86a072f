"""Entry point of the MQTT -> Kafka bridge: ``python -m runners.mqtt_bridge``.

Reads the settings (``[mqtt]``, ``[kafka]``, ``[schema_registry]``), refuses
development credentials under ``DCMMS_ENV=production``, registers the Avro
schemas, then bridges until SIGTERM/SIGINT, after which it flushes Kafka,
acknowledges what was delivered and disconnects. Logs ``bridge ready`` once
the shared subscription is granted (the stack supervisor waits for it) and,
when ``DCMMS_HEALTH_FILE`` is set, touches that file every few seconds while
subscribed and Kafka keeps confirming deliveries.

Optional settings (defaults in brackets): ``[mqtt] bridge_client_id``
[dcmms-bridge-1], ``bridge_share_group`` [dcmms-bridge],
``bridge_receive_maximum`` [20000], ``bridge_session_expiry_s`` [604800],
``bridge_linger_ms`` [50] (how long a take waits for more messages),
``bridge_shared_subscription`` [false] (join the share group instead of subscribing
plainly; see io_connectors.mqtt_bridge.BridgeConfig.shared for why plain is the default).
``--client-id`` and ``--share-group`` override the first two: every bridge process needs its own,
stable across restarts so it resumes its broker session.

Prometheus metrics (docs/metrics.md) are served at ``http://[stack] bind_host:[mqtt]
metrics_port/metrics`` (9883; ``--metrics-port`` overrides it, 0 serves none: a second
bridge on one machine needs a port of its own). A port already taken stops the bridge at
start with a message naming the setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from config.settings import MqttSettings, Settings, SettingsError, load_settings
from io_connectors.edge_metrics import BridgeCollector, DeliveryMetrics
from io_connectors.mqtt_bridge import BridgeConfig, MqttBridge
from io_connectors.raw_producer import EdgeTarget, build_raw_producer
from runners.stack.supervisor import HEARTBEAT_ENV, write_heartbeat
from schemas.validation import RulesError, default_sensor_rules

__all__ = ["DEFAULT_METRICS_PORT", "bridge_config", "main", "metrics_port", "metrics_url"]

_LOGGER = logging.getLogger("runners.mqtt_bridge")

# [mqtt] metrics_port when the setting is absent.
DEFAULT_METRICS_PORT: int = MqttSettings.metrics_port


def bridge_config(settings: Settings, client_id: str | None = None,
                  share_group: str | None = None,
                  session_expiry_s: int | None = None) -> BridgeConfig:
    """The bridge's MQTT settings; errors name the setting at fault."""
    return BridgeConfig(
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        username=settings.mqtt.bridge_username,
        password=settings.mqtt.bridge_password,
        client_id=client_id or settings.mqtt.bridge_client_id,
        share_group=share_group or settings.mqtt.bridge_share_group,
        # --share-group means sharing; otherwise [mqtt] bridge_shared_subscription decides.
        shared=bool(share_group) or settings.mqtt.bridge_shared_subscription,
        receive_maximum=settings.mqtt.bridge_receive_maximum,
        linger_ms=settings.mqtt.bridge_linger_ms,
        session_expiry_s=session_expiry_s if session_expiry_s is not None
        else settings.mqtt.bridge_session_expiry_s,
    )


def metrics_port(settings: Settings, override: int | None = None) -> int:
    """The bridge's metrics port (0: none); errors name the setting."""
    port = override if override is not None else settings.mqtt.metrics_port
    if not 0 <= port <= 65535:
        raise SettingsError(f"setting {settings.origin('mqtt', 'metrics_port')} (or "
                            f"--metrics-port) must be 0..65535, got {port}")
    return port


def metrics_url(settings: Settings) -> str | None:
    """Where the stack's bridge serves ``/metrics`` (None when [mqtt] metrics_port is 0)."""
    port = metrics_port(settings)
    if not port:
        return None
    host = settings.stack.bind_host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{host}:{port}/metrics"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.mqtt_bridge",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", help="stable MQTT client id of this bridge instance "
                        "(default: [mqtt] bridge_client_id)")
    parser.add_argument("--share-group", help="subscribe as a member of this MQTT 5 "
                        "shared-subscription group (default: [mqtt] "
                        "bridge_shared_subscription and bridge_share_group)")
    parser.add_argument("--session-expiry-s", type=int,
                        help="broker session expiry (default: [mqtt] bridge_session_expiry_s or "
                        "7 days); short for throw-away bridges (tests, benchmarks) so their "
                        "sessions do not keep queueing telemetry after they are gone")
    parser.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics on this port (default: [mqtt] "
                        f"metrics_port or {DEFAULT_METRICS_PORT}; 0: no metrics server)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        settings.check_production()
        config = bridge_config(settings, args.client_id, args.share_group,
                               args.session_expiry_s)
        rules = default_sensor_rules()
        port = metrics_port(settings, args.metrics_port)
        bind_host = settings.stack.bind_host
    except (SettingsError, RulesError, ValueError) as exc:
        _LOGGER.error("cannot start the bridge: %s", exc)
        return 2
    # A registry of its own, served (daemon thread) before anything else so a taken port
    # fails the start at once; the bridge's collector joins it once the bridge exists.
    registry = CollectorRegistry()
    delivery = DeliveryMetrics.create(registry)
    if port:
        try:
            start_http_server(port, addr=bind_host, registry=registry)
        except OSError as exc:
            _LOGGER.error("cannot serve the bridge's metrics on %s:%d (setting %s, or "
                          "--metrics-port; 0 serves none): %s", bind_host, port,
                          settings.origin("mqtt", "metrics_port"), exc)
            return 2
        _LOGGER.info("bridge metrics on http://%s:%d/metrics", bind_host, port)
    stopping = threading.Event()
    bridge: MqttBridge | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _LOGGER.info("received %s; shutting down", signal.Signals(signum).name)
        stopping.set()
        if bridge is not None:
            bridge.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # The registry (or Kafka behind it) may start after us: retry with backoff.
    delay = 1.0
    while True:
        try:
            producer = build_raw_producer(EdgeTarget.from_settings(settings),
                                          client_id=f"dcmms-bridge-{config.client_id}",
                                          delivery_observer=delivery.observe)
            break
        except Exception as exc:  # noqa: BLE001 - reported, then retried
            _LOGGER.error("cannot register schemas / create the Kafka producer (registry %s, "
                          "Kafka %s): %s; retrying in %.0f s",
                          settings.schema_registry.url,
                          settings.kafka.bootstrap_servers, exc, delay)
            if stopping.wait(delay):
                return 0
            delay = min(delay * 2, 30.0)

    # The stack supervisor judges health by this file's age (runners/stack/bridge.py).
    heartbeat_file = os.environ.get(HEARTBEAT_ENV)
    bridge = MqttBridge(config, producer, rules=rules,
                        on_ready=lambda: _LOGGER.info(
                            "bridge ready: %s subscribed to %s on %s:%d", config.client_id,
                            config.subscription, config.host, config.port),
                        on_healthy=(lambda: write_heartbeat(heartbeat_file))
                        if heartbeat_file else None)
    registry.register(BridgeCollector(bridge.snapshot))

    if stopping.is_set():
        return 0
    try:
        bridge.run()
    except RuntimeError as exc:
        _LOGGER.error("bridge failed: %s", exc)
        return 1
    s = bridge.stats
    _LOGGER.info("bridge exited cleanly: received %d, produced %d, dead-lettered %d, acked %d",
                 s.received, s.produced, s.dead_lettered, s.acked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
