"""Does a PUBACKed QoS 1 message survive a SIGKILL of Mosquitto? Measured per persistence setting.

    python -m chaos.mqtt_persistence                      the default matrix, results table
    python -m chaos.mqtt_persistence --rate 1000 --publish-s 12 --settings 30,1,changes:1

Mosquitto keeps its whole state (sessions, subscriptions, queued messages) in
memory and writes it to ``mosquitto.db`` only every ``autosave_interval``
seconds, or, with ``autosave_on_changes true``, after that many changes, and on
a clean shutdown. A SIGKILL loses whatever changed since the last save,
PUBACKs already sent included. This probe measures how much, on a throw-away
broker (its own temporary directory and a free port; never a stack's broker):

1. start Mosquitto with ``persistence true`` and the setting under test;
2. a subscriber with a persistent session (the bridge's: fixed client id,
   ``clean_start`` false, long session expiry) subscribes to ``probe/#`` at QoS 1,
   and the broker is restarted cleanly (SIGTERM saves the session, as a long-running
   broker has it on disk); in the ``offline`` mode the subscriber stays away, so
   everything queues in the broker (the bridge is down, or holds its acks while Kafka
   is down); in the ``online``
   mode it stays connected and acks each message as it arrives (a bridge keeping up);
3. a publisher sends QoS 1 messages at ``--rate`` for ``--publish-s`` seconds and
   records each PUBACK; then the broker gets SIGKILL;
4. the broker is started again on the same files, the subscriber resumes its
   session and a marker message is published after it; once the marker arrives
   (per-session order: every message queued before it has been delivered),
   lost = PUBACKed ids the subscriber never received (before or after the kill).

Also measured per setting: the broker's CPU time per message and the bytes it
wrote to disk while the publisher ran (psutil), which is the price of saving more
often. The table is printed and written with ``--out`` (results file for
docs/reliability.md, "Mosquitto SIGKILL").
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["Setting", "Trial", "main", "parse_setting", "run_trial"]

_SUB_ID = "probe-bridge-session"


@dataclass(frozen=True)
class Setting:
    """``autosave_interval`` and ``autosave_on_changes`` of one trial."""

    interval: int
    on_changes: bool = False

    def lines(self) -> list[str]:
        return [f"autosave_interval {self.interval}",
                f"autosave_on_changes {'true' if self.on_changes else 'false'}"]

    def describe(self) -> str:
        return (f"autosave_on_changes true, autosave_interval {self.interval} (changes)"
                if self.on_changes else f"autosave_interval {self.interval} (s)")


def parse_setting(text: str) -> Setting:
    """``"30"`` -> every 30 s; ``"changes:100"`` -> after every 100 changes."""
    kind, _, value = text.strip().rpartition(":")
    if kind not in ("", "changes"):
        raise ValueError(f"setting {text!r}: expected N (seconds) or changes:N")
    return Setting(int(value), on_changes=kind == "changes")


@dataclass
class Trial:
    setting: Setting
    mode: str                     # "offline" | "online"
    rate: float
    sent: int = 0
    acked: int = 0
    received: int = 0
    lost: int = 0
    redelivered: int = 0          # received more than once (allowed: at-least-once)
    achieved_rate: float = 0.0    # PUBACKs per second while publishing
    cpu_us_per_msg: float = 0.0   # broker CPU while publishing, per acked message
    disk_mb: float = 0.0          # bytes the broker wrote while publishing
    error: str | None = None
    lost_examples: list[int] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto",
                                                      path="/usr/sbin:/usr/bin:/sbin")
    if not found:
        raise SystemExit("mosquitto not found; run `make system-deps`")
    return found


class _Broker:
    def __init__(self, workdir: Path, setting: Setting) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir}/",
            *setting.lines(),
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            "user root" if os.geteuid() == 0 else "",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> psutil.Process:
        log = (self.workdir / "broker.log").open("ab")
        self.proc = subprocess.Popen([_mosquitto(), "-c", str(self.conf)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return psutil.Process(self.proc.pid)
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}; see "
                                   f"{self.workdir / 'broker.log'}")
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class _Subscriber:
    """The bridge's kind of session: fixed client id, persistent, QoS 1, acks on receipt."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[int] = []
        self.markers: queue.Queue[str] = queue.Queue()
        self.client: mqtt.Client | None = None

    def connect(self, subscribe: bool) -> bool:
        connected: queue.Queue[tuple[int, bool]] = queue.Queue()
        subacked: queue.Queue[int] = queue.Queue()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=_SUB_ID,
                             protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, u, f, rc, p: connected.put((rc.value, f.session_present))
        client.on_subscribe = lambda c, u, mid, rcs, p: subacked.put(mid)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            if msg.payload.startswith(b"marker-"):
                self.markers.put(msg.payload.decode())
            else:
                self.received.append(int(msg.payload))

        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 86400
        client.connect("127.0.0.1", self.port, keepalive=30, clean_start=False,
                       properties=props)
        client.loop_start()
        rc, present = connected.get(timeout=10)
        if rc != 0:
            raise RuntimeError(f"subscriber refused: {rc}")
        if subscribe:
            client.subscribe("probe/#", qos=1)
            subacked.get(timeout=10)
        self.client = client
        return present

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def drop(self) -> None:
        """The broker is gone: stop the network loop without a DISCONNECT."""
        if self.client is not None:
            self.client.loop_stop()
            self.client = None


def _publish(port: int, rate: float, seconds: float) -> tuple[int, set[int], float]:
    """QoS 1 at ``rate`` for ``seconds``; (sent, PUBACKed ids, seconds it took)."""
    infos: list[tuple[mqtt.MQTTMessageInfo, int]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"probe-pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * rate)
        while n < due:
            infos.append((client.publish(f"probe/{n % 10}", str(n).encode(), qos=1), n))
            n += 1
        time.sleep(0.002)
    took = time.monotonic() - t0
    client.loop_stop()   # no more PUBACKs counted: the broker dies now
    # What a sensor was told at the moment of the kill.
    return n, {i for info, i in infos if _acknowledged(info)}, took


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except RuntimeError:   # paho raises while disconnected
        return False


def run_trial(setting: Setting, mode: str, rate: float, publish_s: float,
              say: Callable[[str], None] = print) -> Trial:
    trial = Trial(setting, mode, rate)
    workdir = Path(tempfile.mkdtemp(prefix="mqtt-persist-"))
    broker = _Broker(workdir, setting)
    sub = _Subscriber(broker.port)
    try:
        broker.start()
        sub.connect(subscribe=True)
        sub.disconnect()
        # A clean stop saves the session: the bridge's session is on disk long before a
        # crash, and the kill should measure the messages, not a brand-new subscription.
        broker.stop()
        proc = broker.start()
        if mode == "online":
            if not sub.connect(subscribe=False):
                raise RuntimeError("the session was not restored after a clean restart")
        cpu0, io0 = sum(proc.cpu_times()[:2]), _written(proc)
        sent, acked, took = _publish(broker.port, rate, publish_s)
        cpu1, io1 = sum(proc.cpu_times()[:2]), _written(proc)
        broker.kill()
        sub.drop()
        trial.sent, trial.acked = sent, len(acked)
        trial.achieved_rate = len(acked) / took
        trial.cpu_us_per_msg = (cpu1 - cpu0) * 1e6 / max(1, len(acked))
        trial.disk_mb = (io1 - io0) / 1e6
        broker.start()
        present = sub.connect(subscribe=False)
        if not present:
            trial.error = "session lost: the restarted broker had no session of the subscriber"
            sub.disconnect()
            sub.connect(subscribe=True)
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe-marker",
                          protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("probe/marker", marker.encode(), qos=1).wait_for_publish(10)
        try:
            while sub.markers.get(timeout=60) != marker:
                pass
        except queue.Empty:
            trial.error = "the marker published after the restart never arrived"
        pub.loop_stop()
        got = set(sub.received)
        lost = sorted(acked - got)
        trial.received = len(got & acked)
        trial.lost = len(lost)
        trial.lost_examples = lost[:5]
        trial.redelivered = len(sub.received) - len(set(sub.received))
    except Exception as exc:  # noqa: BLE001 - one row of the table, the matrix goes on
        trial.error = str(exc)[:200]
    finally:
        sub.disconnect()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"{setting.describe()}, subscriber {mode}: sent {trial.sent}, PUBACKed {trial.acked}, "
        f"lost {trial.lost}{' ' + trial.error if trial.error else ''}")
    return trial


def _written(proc: psutil.Process) -> int:
    try:
        return int(proc.io_counters().write_bytes)
    except (psutil.Error, AttributeError):
        return 0


def table(trials: Sequence[Trial]) -> str:
    lines = ["| setting | subscriber | PUBACKed | lost after SIGKILL | redelivered | "
             "PUBACKs/s reached | broker CPU us/msg | broker disk writes MB | note |",
             "|" + "---|" * 9]
    for t in trials:
        lines.append(f"| {t.setting.describe()} | {t.mode} | {t.acked} | {t.lost} | "
                     f"{t.redelivered} | {t.achieved_rate:.0f} | {t.cpu_us_per_msg:.0f} | "
                     f"{t.disk_mb:.1f} | {t.error or ''} |")
    return "\n".join(lines)


DEFAULT_SETTINGS = "30,5,1,changes:1000,changes:100,changes:1"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.mqtt_persistence",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help="comma-separated: N (autosave_interval N s) or changes:N "
                             f"(autosave_on_changes true, every N changes); default "
                             f"{DEFAULT_SETTINGS}")
    parser.add_argument("--modes", default="offline,online")
    parser.add_argument("--rate", type=float, default=1000.0, help="QoS 1 publishes/s")
    parser.add_argument("--publish-s", type=float, default=12.0,
                        help="seconds of publishing before the SIGKILL")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings.split(",") if s.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"offline", "online"}:
        parser.error("--modes takes offline and/or online")

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    load0 = os.getloadavg()
    trials = [run_trial(s, m, args.rate, args.publish_s, say) for s in settings for m in modes]
    load1 = os.getloadavg()
    version = subprocess.run([_mosquitto(), "-h"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0]
    header = (f"{' '.join(['python -m chaos.mqtt_persistence', *(argv or sys.argv[1:])])}\n"
              f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {version}, {args.rate:.0f} QoS 1 "
              f"publishes/s for {args.publish_s:.0f} s then SIGKILL; load average "
              f"{load0[0]:.2f} before, {load1[0]:.2f} after; {os.cpu_count()} cores")
    text = f"{header}\n\n{table(trials)}\n"
    print()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if all(t.error is None for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
