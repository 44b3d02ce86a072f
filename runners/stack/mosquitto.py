"""Mosquitto MQTT broker (Debian package) with password auth, an ACL and persistence.

Generated under ``<run>/conf/mosquitto`` on every start from ``[mqtt]``:

* ``mosquitto.conf``: one listener on ``[stack] bind_host``:``[mqtt] port``,
  anonymous clients refused, persistence under ``<run>/data/mosquitto``, queues
  large enough for a persistent bridge session to hold a backlog while the
  bridge is down.
* ``passwd`` (made with ``mosquitto_passwd``): the sensor account and the bridge
  account.
* ``acl``: the sensor account may only publish to ``telemetry/+/+/+`` (the
  bridge's subscription; other depths would reach nobody); the bridge
  account may only read ``telemetry/#`` (shared subscriptions
  ``$share/<group>/telemetry/#`` included).
  When ``[mqtt] bench_topic_root`` is set (the local stack sets ``bench``), the
  sensor account may also publish under ``<root>/#`` and the bridge account read
  it: the benchmark's direct MQTT->QuestDB peer (bench/anchors.py) needs a root
  the pipeline's bridge does not consume. Production configs leave it empty.

Started as root, Mosquitto drops privileges to the ``mosquitto`` user, which
must then read the config and write the data directory: both are handed to
that user. If that user cannot even reach the run directory (a parent without
``o+x``, e.g. a checkout under /root), the broker keeps running as root
instead, which is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from config.settings import Settings
from runners.stack.spec import ServiceSpec, StackPaths

__all__ = ["services", "TOPIC_ROOT", "check_login"]

_LOGGER = logging.getLogger(__name__)

TOPIC_ROOT = "telemetry"
_HINT = "run `make system-deps` (apt-get install mosquitto mosquitto-clients)"
# Messages queued per disconnected persistent session: at 50k events/s this is
# about 20 s of backlog per bridge session; more would only hide a dead bridge.
MAX_QUEUED_MESSAGES = 1_000_000
# Unacknowledged QoS1 messages in flight per client; paho's 16-bit message ids
# and bridge batching are comfortable with this.
MAX_INFLIGHT_MESSAGES = 1000


def _find(tool: str) -> str:
    """Debian puts mosquitto in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin")
    return found or tool


def check_login(host: str, port: int, username: str, password: str,
                timeout_s: float = 3.0) -> int:
    """Connect with MQTT v3.1.1 and return the CONNACK code (0 = accepted; -1 = no answer)."""
    result: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"dcmms-health-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode,
                   _p: object) -> None:
        result["rc"] = rc.value

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return -1
    deadline = time.monotonic() + timeout_s
    while "rc" not in result and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    return result.get("rc", -1)


def _reachable_by_others(path: Path) -> bool:
    """True when every parent directory of ``path`` is searchable by other users."""
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def services(settings: Settings, paths: StackPaths) -> list[ServiceSpec]:
    bind_host = settings.stack.bind_host
    host = settings.mqtt.host
    port = settings.mqtt.port
    sensor_user = settings.mqtt.sensor_username
    sensor_pw = settings.mqtt.sensor_password
    bridge_user = settings.mqtt.bridge_username
    bridge_pw = settings.mqtt.bridge_password
    bench_root = settings.mqtt.bench_topic_root  # stripped of blanks and slashes
    # Mosquitto writes its state (sessions, queued messages) to disk only every
    # autosave_interval seconds (or changes, with autosave_on_changes) and at a clean
    # stop: a SIGKILL loses what was queued since; the trade-off is measured in
    # docs/reliability.md ("Mosquitto SIGKILL", chaos/mqtt_persistence.py).
    autosave_interval = settings.mqtt.autosave_interval
    autosave_on_changes = settings.mqtt.autosave_on_changes  # interval >= 1: config.settings
    if sensor_user == bridge_user:
        raise ValueError(f"{settings.origin('mqtt', 'sensor_username')} and "
                         f"{settings.origin('mqtt', 'bridge_username')} must differ")
    conf_dir = paths.conf("mosquitto")
    data_dir = paths.data("mosquitto")
    conf = conf_dir / "mosquitto.conf"
    passwd = conf_dir / "passwd"
    acl = conf_dir / "acl"
    broker = _find("mosquitto")
    passwd_tool = _find("mosquitto_passwd")

    def prepare() -> None:
        conf_dir.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        run_as = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("mosquitto")
            except KeyError:
                account = None
            if account is not None and _reachable_by_others(conf_dir) \
                    and _reachable_by_others(data_dir):
                run_as = account
            else:
                _LOGGER.warning("mosquitto runs as root: user 'mosquitto' missing or cannot "
                                "reach %s", paths.run_dir)
        tmp = passwd.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        for i, (user, pw) in enumerate(((sensor_user, sensor_pw), (bridge_user, bridge_pw))):
            cmd = [passwd_tool, "-b", *(["-c"] if i == 0 else []), str(tmp), user, pw]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                    timeout=30)
            if result.returncode != 0:
                raise RuntimeError(f"mosquitto_passwd failed for user {user}: "
                                   f"{(result.stderr or result.stdout).strip()}")
        tmp.replace(passwd)
        acl.write_text("\n".join([
            "# Written by runners/stack/mosquitto.py; accounts come from [mqtt] settings.",
            f"user {sensor_user}",
            # Exactly the bridge's subscription (telemetry/site/asset/type): a publish to
            # any other depth would be accepted with nobody to read it, a silent drop;
            # this way MQTT 5 publishers get "not authorized" in their PUBACK.
            f"topic write {TOPIC_ROOT}/+/+/+",
            *([f"topic write {bench_root}/#"] if bench_root else []),
            "",
            f"user {bridge_user}",
            f"topic read {TOPIC_ROOT}/#",
            *([f"topic read {bench_root}/#"] if bench_root else []),
            "",
        ]))
        conf.write_text("\n".join([
            "# Written by runners/stack/mosquitto.py on every start; edit config/local.toml.",
            "per_listener_settings false",
            f"listener {port} {bind_host}",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {acl}",
            "persistence true",
            f"persistence_location {data_dir}/",
            f"autosave_interval {autosave_interval}",
            f"autosave_on_changes {'true' if autosave_on_changes else 'false'}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "max_queued_bytes 0",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            "set_tcp_nodelay true",
            f"user {run_as.pw_name if run_as else 'root'}",
            "log_dest stderr",  # unbuffered, unlike stdout
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
        ]))
        if run_as is not None:
            # The broker reads these after dropping privileges; the password file
            # stays private to that user (mode 600).
            for path in (conf_dir, data_dir, *data_dir.iterdir(), conf, passwd, acl):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
            passwd.chmod(0o600)
            acl.chmod(0o600)

    return [ServiceSpec(
        name="mosquitto",
        argv=[broker, "-c", str(conf)],
        ports=(port,),
        healthy=lambda: check_login(host, port, bridge_user, bridge_pw, timeout_s=2.0) == 0,
        start_timeout_s=30.0,
        stop_timeout_s=15.0,
        prepare=prepare,
        requires={broker: _HINT, passwd_tool: _HINT},
    )]
