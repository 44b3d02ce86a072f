"""The project's schema registry against real Kafka, through confluent-kafka's own clients.

Uses the registry of the running stack ([schema_registry] url) for the client
checks, and starts a private registry process (own port, own topic) for the
restart check, so the stack's registry is never disturbed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from config.settings import REPO_ROOT, load_settings
from io_connectors.schema_registry import RegistrySchemas
from schemas.wire import UnknownSchemaIdError, decode

pytestmark = pytest.mark.integration


def _record(name: str, *fields: dict) -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "test.registry",
                       "fields": [{"name": "event_id", "type": "string"},
                                  {"name": "value", "type": "double"}, *fields]})


V1 = _record("Reading")
V2 = _record("Reading", {"name": "unit", "type": "string", "default": "n/a"},
             {"name": "sensor_type", "type": {"type": "enum", "name": "Kind",
                                              "symbols": ["A", "UNKNOWN"], "default": "UNKNOWN"},
              "default": "UNKNOWN"})
# Compared with V2 (the latest) this adds `site` without a default: old data lacks it.
V2_NO_DEFAULT = _record("Reading", {"name": "unit", "type": "string", "default": "n/a"},
                        {"name": "site", "type": "string"})


def _require(url: str) -> None:
    try:
        requests.get(f"{url}/subjects", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"schema registry not reachable at {url} (setting [schema_registry] url; "
                    f"start the test stack with `make test`): {exc}")


@pytest.fixture(scope="module")
def registry_url() -> str:
    url = load_settings().schema_registry.url.rstrip("/")
    _require(url)
    return url


@pytest.fixture()
def subject() -> str:
    return f"test-{uuid.uuid4().hex[:10]}-value"


def test_register_evolve_and_refuse(registry_url: str, subject: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    id1 = client.register_schema(subject, Schema(V1, "AVRO"))
    # Same schema with different layout: same id, no new version.
    same = json.dumps(json.loads(V1), indent=2)
    assert SchemaRegistryClient({"url": registry_url}).register_schema(
        subject, Schema(same, "AVRO")) == id1
    id2 = client.register_schema(subject, Schema(V2, "AVRO"))
    assert id2 != id1
    assert client.get_versions(subject) == [1, 2]
    assert client.get_latest_version(subject).schema_id == id2
    assert client.lookup_schema(subject, Schema(V1, "AVRO")).version == 1

    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(V2_NO_DEFAULT, "AVRO"))
    assert refused.value.http_status_code == 409
    assert refused.value.error_code == 409
    assert "site" in refused.value.error_message
    assert client.get_versions(subject) == [1, 2]  # nothing registered
    assert not client.test_compatibility(subject, Schema(V2_NO_DEFAULT, "AVRO"))
    assert client.test_compatibility(subject, Schema(V2, "AVRO"))
    assert client.get_compatibility() == "BACKWARD"


def test_error_codes(registry_url: str, subject: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    with pytest.raises(SchemaRegistryError) as missing_subject:
        client.get_latest_version(subject)
    assert missing_subject.value.error_code == 40401
    with pytest.raises(SchemaRegistryError) as missing_schema:
        client.get_schema(987654321)
    assert missing_schema.value.error_code == 40403
    with pytest.raises(SchemaRegistryError) as invalid:
        client.register_schema(subject, Schema('{"type": "nonsense"}', "AVRO"))
    assert invalid.value.error_code == 42201
    client.register_schema(subject, Schema(V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as missing_version:
        client.get_version(subject, 7)
    assert missing_version.value.error_code == 40402
    resp = requests.get(f"{registry_url}/subjects/{subject}/versions/1", timeout=5)
    assert resp.headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"
    # Soft delete hides the subject; re-registering brings back the same id.
    assert client.delete_subject(subject) == [1]
    assert subject not in client.get_subjects()
    assert subject in requests.get(f"{registry_url}/subjects?deleted=true", timeout=5).json()


def test_serializer_round_trip_and_evolution(registry_url: str, subject: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    topic = subject.removesuffix("-value")
    ctx = SerializationContext(topic, MessageField.VALUE)
    v1_bytes = AvroSerializer(client, V1, conf={"auto.register.schemas": True})(
        {"event_id": "e1", "value": 1.5}, ctx)
    # Register v2 up front; a producer that does not auto-register looks it up.
    client.register_schema(subject, Schema(V2, "AVRO"))
    v2_ser = AvroSerializer(SchemaRegistryClient({"url": registry_url}), V2,
                            conf={"auto.register.schemas": False})
    v2_bytes = v2_ser({"event_id": "e2", "value": 2.5, "unit": "V", "sensor_type": "A"}, ctx)
    latest_ser = AvroSerializer(SchemaRegistryClient({"url": registry_url}), None,
                                conf={"auto.register.schemas": False, "use.latest.version": True})
    latest_bytes = latest_ser({"event_id": "e3", "value": 3.5, "unit": "A",
                               "sensor_type": "UNKNOWN"}, ctx)
    assert v1_bytes[1:5] != v2_bytes[1:5] == latest_bytes[1:5]

    # A v2 reader decodes both versions (v1 gets the defaults).
    reader = AvroDeserializer(SchemaRegistryClient({"url": registry_url}), V2)
    assert reader(v1_bytes, ctx) == {"event_id": "e1", "value": 1.5, "unit": "n/a",
                                     "sensor_type": "UNKNOWN"}
    assert reader(v2_bytes, ctx)["unit"] == "V"
    # Without a reader schema the deserializer uses the writer's.
    assert AvroDeserializer(client)(v1_bytes, ctx) == {"event_id": "e1", "value": 1.5}

    # The project's own decoder path: schemas.wire + RegistrySchemas lookup.
    lookup = RegistrySchemas(registry_url)
    from schemas.avro import parse_schema

    _, decoded = decode(v1_bytes, lookup, parse_schema(V2))
    assert decoded["unit"] == "n/a"
    with pytest.raises(UnknownSchemaIdError):
        lookup.schema_for_id(987654321)


# --- restart: a private registry process with its own topic ------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RegistryProcess:
    def __init__(self, port: int, topic: str, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "DCMMS_SCHEMA_REGISTRY_PORT": str(port),
                    "DCMMS_SCHEMA_REGISTRY_TOPIC": topic, "DCMMS_STACK_BIND_HOST": "127.0.0.1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "runners.registry_server"],
                                         cwd=REPO_ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"registry exited with {self.proc.returncode}; log: {self.log}")
            try:
                if requests.get(f"{self.url}/subjects", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        pytest.fail(f"registry on port {self.port} did not answer in 60 s; log: {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


@pytest.fixture()
def private_registry(tmp_path: Path, registry_url: str) -> Iterator[_RegistryProcess]:
    reg = _RegistryProcess(_free_port(), f"_schemas_test_{uuid.uuid4().hex[:8]}",
                           tmp_path / "registry.log")
    try:
        yield reg
    finally:
        reg.stop()


def test_restart_keeps_ids_and_versions(private_registry: _RegistryProcess) -> None:
    private_registry.start()
    url = private_registry.url
    client = SchemaRegistryClient({"url": url})
    ids = {s: (client.register_schema(s, Schema(V1, "AVRO")),
               client.register_schema(s, Schema(V2, "AVRO"))) for s in ("a-value", "b-value")}
    # One schema text, one global id, whatever the subject.
    assert ids["a-value"] == ids["b-value"]
    client.set_compatibility("b-value", "NONE")
    before = {s: [client.get_version(s, v).schema_id for v in (1, 2)] for s in ids}

    private_registry.stop()
    private_registry.start()

    after_client = SchemaRegistryClient({"url": url})
    after = {s: [after_client.get_version(s, v).schema_id for v in (1, 2)] for s in ids}
    assert after == before
    assert after_client.get_compatibility("b-value") == "NONE"
    assert after_client.get_schema(ids["a-value"][0]).schema_str == json.dumps(
        json.loads(V1), sort_keys=True, separators=(",", ":"))
    # Ids keep growing after a restart: a new schema gets a fresh, larger id.
    v3 = _record("Reading", {"name": "extra", "type": "long", "default": 0})
    assert after_client.register_schema("a-value", Schema(v3, "AVRO")) > max(ids["a-value"])
    assert after_client.get_versions("a-value") == [1, 2, 3]
