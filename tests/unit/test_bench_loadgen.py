"""Unit tests of the load generator: mosquitto_pub lines, topics, PUBACK count, REST retries."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from bench.loadgen import (
    FLEET_SENSORS,
    SENSOR_KINDS,
    GeneratorConfig,
    PubackTally,
    TopicLines,
    WorkerResult,
    fleet_item,
    generator_sensors,
    mosquitto_pub_argv,
    mqtt_message,
    resolve_mqtt_client,
    response_retries,
    rest_session,
    summarise_workers,
)


@pytest.mark.parametrize("root", ["telemetry", "bench/direct-abc123"])
def test_topic_lines_are_the_mqtt_message_payloads(root: str) -> None:
    for sensor in generator_sensors(16):
        lines = TopicLines.for_sensor(sensor, root)
        for k in (0, 3, 250):
            item = fleet_item(f"bx1m0-{k}", sensor + k * FLEET_SENSORS, 1_767_225_600_123 + k)
            topic, payload = mqtt_message(item, root)
            assert lines.topic == topic
            assert lines.line(item["event_id"], item["timestamp"]).encode() == payload + b"\n"


def test_topic_lines_pass_the_edge() -> None:
    from schemas.edge import event_from_mqtt
    from schemas.validation import load_sensor_rules

    rules = load_sensor_rules()
    for sensor in generator_sensors(16):
        lines = TopicLines.for_sensor(sensor)
        line = lines.line("e-1", 1_767_225_600_000)
        assert line.endswith("\n") and line.count("\n") == 1
        result = event_from_mqtt(line.rstrip("\n").encode(), lines.topic,
                                 now_ms=1_767_225_600_000, rules=rules)
        assert result.ok, result.errors
        assert json.loads(line)["event_id"] == "e-1"


def test_generator_sensors_spread_over_types_and_sites() -> None:
    for count in (1, 4, 16, 64, 1000, 4000):
        sensors = generator_sensors(count)
        assert len(set(sensors)) == count and all(0 <= s < FLEET_SENSORS for s in sensors)
    topics = [TopicLines.for_sensor(s).topic for s in generator_sensors(16)]
    assert {t.split("/")[3] for t in topics} == {kind for kind, *_ in SENSOR_KINDS}
    assert len({t.split("/")[1] for t in topics}) == 10
    with pytest.raises(ValueError):
        generator_sensors(0)


def test_puback_tally_counts_across_chunk_boundaries() -> None:
    out = b"".join(
        [b"Client g received CONNACK (0)\n"]
        + [b"Client g sending PUBLISH (d0, q1, r0, m%d, 'telemetry/a/b/C', ... (90 bytes))\n"
           % i for i in range(1, 6)]
        + [b"Client g received PUBACK (Mid: 1, RC:0)\n",
           b"Client g received PUBACK (Mid: 2, RC:16)\n",
           b"Client g received PUBACK (Mid: 3, RC:135)\n",
           b"Client g received PUBACK (Mid: 4, RC:0)\n",
           b"Client g received PUBACK (Mid: 5, RC:0)"])  # no newline at EOF
    for size in (1, 7, 40, len(out)):
        tally = PubackTally()
        for i in range(0, len(out), size):
            tally.feed(out[i:i + size])
        tally.close()
        assert (tally.acked, tally.failed) == (4, 1), size


def test_mosquitto_pub_argv() -> None:
    cfg = GeneratorConfig(path="mqtt", rate=1, seconds=1, id_prefix="x", inflight=1000,
                          mqtt_host="127.0.0.1", mqtt_port=1883, mqtt_username="sensor01",
                          mqtt_password="pw")
    argv = mosquitto_pub_argv(cfg, "telemetry/s/a/T", "bench-gen-1")
    assert argv[0] == "mosquitto_pub"
    switches = [a for a in argv[1:] if a in ("-l", "-d")]
    assert sorted(switches) == ["-d", "-l"]  # one message per stdin line; PUBACKs printed
    rest = [a for a in argv[1:] if a not in ("-l", "-d")]
    assert dict(zip(rest[::2], rest[1::2], strict=True)) == {
        "-h": "127.0.0.1", "-p": "1883", "-u": "sensor01", "-P": "pw", "-V": "mqttv5",
        "-q": "1", "-M": "1000", "--id": "bench-gen-1", "-t": "telemetry/s/a/T"}


def test_resolve_mqtt_client() -> None:
    assert resolve_mqtt_client("auto") == "raw"
    assert resolve_mqtt_client("mosquitto_pub") == "mosquitto_pub"
    assert resolve_mqtt_client("paho") == "paho"
    with pytest.raises(ValueError):
        resolve_mqtt_client("hivemq")


def test_summarise_workers_counts_children_cpu_but_not_for_saturation() -> None:
    results = [WorkerResult(0, 100, 100, 100, 0, 1.0, 10.0, child_cpu_s=30.0, retried=1),
               WorkerResult(1, 100, 100, 100, 0, 2.0, 10.0, child_cpu_s=30.0, retried=2)]
    load = summarise_workers(20, 10, results)
    assert load.generator_cpu_s == 63.0 and load.retried == 3
    assert load.generator_max_cpu_util == 0.2 and not load.generator_saturated


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152,
                               268_435_455])
def test_remaining_length_round_trips(n: int) -> None:
    from bench.mqtt_raw import _decode_varint, encode_remaining_length

    encoded = encode_remaining_length(n)
    assert len(encoded) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    assert _decode_varint(b"\x30" + encoded, 1) == (n, 1 + len(encoded))


def test_remaining_length_out_of_range() -> None:
    from bench.mqtt_raw import encode_remaining_length

    with pytest.raises(ValueError):
        encode_remaining_length(268_435_456)


def _dropping_server(drops: int) -> tuple[str, list[bytes], threading.Thread]:
    """A real HTTP/1.1 server on loopback that reads the first ``drops`` requests and closes
    their connections without a response (what gunicorn's idle keep-alive close looks like to
    a client that has just sent on it), then answers 202 with an ingest-style body."""
    srv = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        with srv:
            for n in range(drops + 1):
                conn, _ = srv.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    while len(body) < length:
                        body += conn.recv(65536)
                    seen.append(body)
                    if n < drops:
                        continue  # closed without a response
                    reply = json.dumps({"accepted": 2}).encode()
                    conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(reply)
                                 + reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/api/v1/telemetry", seen, thread


def test_rest_session_sends_again_when_the_connection_drops_before_a_response() -> None:
    url, seen, thread = _dropping_server(drops=1)
    body = b'[{"event_id": "a"}, {"event_id": "b"}]'
    response = rest_session("k").post(url, data=body, timeout=10)
    thread.join(timeout=10)
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    assert seen == [body, body]            # the same request, sent twice
    assert response_retries(response) == 1


def test_rest_session_without_retries_reports_the_dropped_connection() -> None:
    import requests

    url, seen, thread = _dropping_server(drops=1)
    with pytest.raises(requests.ConnectionError):
        rest_session("k", retries=0).post(url, data=b"[]", timeout=10)
    assert seen == [b"[]"]
    thread.join(timeout=0.1)


def test_rest_session_gives_up_after_its_retries() -> None:
    import requests

    url, seen, thread = _dropping_server(drops=3)
    with pytest.raises(requests.ConnectionError):
        rest_session("k", retries=2).post(url, data=b"[]", timeout=10)
    assert len(seen) == 3
    thread.join(timeout=0.1)
