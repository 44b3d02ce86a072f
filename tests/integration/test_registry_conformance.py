"""The registry against Confluent's REST API, through confluent-kafka's own client.

One private registry process (its own port and ``_schemas`` topic on the test
stack's Kafka, tests/integration/test_schema_registry.py's ``private_registry``)
serves every call ``confluent_kafka.schema_registry.SchemaRegistryClient``
offers; each test checks the answers and error codes Confluent's registry gives
(40401 subject, 40402 version, 40403 schema, 40404/40406 repeated soft delete,
40405/40407 hard delete before soft, 40409 mode, 42202 version, 409). A
subject holding ``/`` travels as ``%2F``. A fresh client per step where its
caches could answer instead of the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from confluent_kafka.schema_registry import (
    AssociationCreateOrUpdateRequest,
    Schema,
    SchemaRegistryClient,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.schema_registry_client import (
    ConfigCompatibilityLevel,
    ServerConfig,
)

from tests.integration.test_schema_registry import (  # noqa: F401 - fixtures
    V1,
    V2,
    V2_NO_DEFAULT,
    _RegistryProcess,
    private_registry,
    registry_url,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def url(private_registry: _RegistryProcess) -> Iterator[str]:  # noqa: F811
    private_registry.start()
    yield private_registry.url


def _client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url})


def _level(value: object) -> str:
    return str(getattr(value, "value", value))


def _code(exc: pytest.ExceptionInfo[SchemaRegistryError]) -> int:
    return int(exc.value.error_code)


def test_reads_by_id_and_listings(url: str) -> None:
    c = _client(url)
    first = c.register_schema_full_response("a-value", Schema(V1, "AVRO"))
    assert (first.subject, first.version) == ("a-value", 1)
    sid = c.register_schema("org/x-value", Schema(V1, "AVRO"))
    assert sid == first.schema_id                      # one schema text, one global id
    v2 = c.register_schema("a-value", Schema(V2, "AVRO"))
    assert c.get_schema_types() == ["AVRO"]
    assert json.loads(c.get_schema(sid).schema_str) == json.loads(V1)
    assert json.loads(c.get_schema(sid, subject_name="org/x-value").schema_str) == json.loads(V1)
    with pytest.raises(SchemaRegistryError) as err:
        _client(url).get_schema(v2, subject_name="org/x-value")   # not under that subject
    assert _code(err) == 40403
    assert c.get_subjects_by_schema_id(sid) == ["a-value", "org/x-value"]
    assert c.get_subjects_by_schema_id(sid, subject_name="org/x-value") == ["org/x-value"]
    assert [(v.subject, v.version) for v in c.get_schema_versions(sid)] == [
        ("a-value", 1), ("org/x-value", 1)]
    assert [(v.subject, v.version) for v in c.get_schema_versions(sid, limit=1)] == [
        ("a-value", 1)]
    with pytest.raises(SchemaRegistryError) as err:
        c.get_schema_versions(987654)
    assert _code(err) == 40403
    assert c.get_subjects() == ["a-value", "org/x-value"]
    assert c.get_subjects(subject_prefix="org/") == ["org/x-value"]
    assert c.get_subjects(offset=1) == ["org/x-value"]
    assert c.get_versions("a-value") == [1, 2]
    assert c.get_versions("org/x-value") == [1]        # the "/" went as %2F
    assert c.get_latest_version("a-value").schema_id == v2
    assert c.get_version("a-value", 1).schema_id == sid
    assert c.lookup_schema("org/x-value", Schema(V1, "AVRO")).version == 1
    assert c.get_latest_with_metadata("a-value", {}).version == 2
    with pytest.raises(SchemaRegistryError) as err:
        c.get_latest_with_metadata("a-value", {"owner": "nobody"})
    assert _code(err) == 40403
    assert c.get_referenced_by("a-value", 1) == []
    assert c.get_contexts() == ["."]
    # GET /schemas has no client method: every (subject, version) with its id.
    listed = requests.get(f"{url}/schemas", timeout=10).json()
    assert [(s["subject"], s["version"], s["id"]) for s in listed] == [
        ("a-value", 1, sid), ("a-value", 2, v2), ("org/x-value", 1, sid)]
    latest = requests.get(f"{url}/schemas", params={"latestOnly": "true",
                                                     "subjectPrefix": "a-"}, timeout=10).json()
    assert [(s["subject"], s["version"]) for s in latest] == [("a-value", 2)]


def test_version_errors(url: str) -> None:
    c = _client(url)
    c.register_schema("v-value", Schema(V1, "AVRO"))
    for version, code in ((0, 42202), (-2, 42202), (7, 40402)):
        with pytest.raises(SchemaRegistryError) as err:
            _client(url).get_version("v-value", version)
        assert _code(err) == code, version
    with pytest.raises(SchemaRegistryError) as err:
        c.get_versions("nope-value")
    assert _code(err) == 40401
    with pytest.raises(SchemaRegistryError) as err:
        c.lookup_schema("v-value", Schema(V2, "AVRO"))
    assert _code(err) == 40403


def test_soft_and_hard_deletes(url: str) -> None:
    c = _client(url)
    ids = [c.register_schema("d-value", Schema(s, "AVRO")) for s in (V1, V2)]
    # Hard delete before a soft one is refused, for a version and for the subject.
    with pytest.raises(SchemaRegistryError) as err:
        c.delete_version("d-value", 1, permanent=True)
    assert _code(err) == 40407
    with pytest.raises(SchemaRegistryError) as err:
        c.delete_subject("d-value", permanent=True)
    assert _code(err) == 40405

    assert c.delete_version("d-value", 1) == 1
    with pytest.raises(SchemaRegistryError) as err:
        _client(url).delete_version("d-value", 1)
    assert _code(err) == 40406
    fresh = _client(url)
    with pytest.raises(SchemaRegistryError) as err:
        fresh.get_version("d-value", 1)
    assert _code(err) == 40402
    assert fresh.get_version("d-value", 1, deleted=True).schema_id == ids[0]
    assert fresh.get_versions("d-value") == [2]
    assert fresh.get_versions("d-value", deleted=True) == [1, 2]
    assert fresh.get_versions("d-value", deleted_only=True) == [1]
    assert fresh.lookup_schema("d-value", Schema(V1, "AVRO"), deleted=True).version == 1
    assert fresh.delete_version("d-value", 1, permanent=True) == 1
    assert _client(url).get_versions("d-value", deleted=True) == [2]

    assert c.delete_subject("d-value") == [2]
    with pytest.raises(SchemaRegistryError) as err:
        _client(url).delete_subject("d-value")
    assert _code(err) == 40404
    assert "d-value" not in _client(url).get_subjects()
    assert "d-value" in _client(url).get_subjects(deleted=True)
    assert _client(url).get_subjects(deleted_only=True) == ["d-value"]
    assert c.delete_subject("d-value", permanent=True) == [2]
    assert "d-value" not in _client(url).get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as err:
        _client(url).delete_subject("d-value")
    assert _code(err) == 40401
    # Ids stay resolvable (old records keep decoding) and are never handed out again.
    assert json.loads(_client(url).get_schema(ids[0]).schema_str) == json.loads(V1)
    v3 = json.dumps({**json.loads(V2), "doc": "new"})
    assert c.register_schema("e-value", Schema(v3, "AVRO")) > max(ids)


def test_compatibility_config_and_mode(url: str) -> None:
    c = _client(url)
    c.register_schema("c-value", Schema(V1, "AVRO"))
    c.register_schema("c-value", Schema(V2, "AVRO"))
    assert c.test_compatibility("c-value", Schema(V2, "AVRO")) is True
    assert c.test_compatibility("c-value", Schema(V2_NO_DEFAULT, "AVRO")) is False
    assert c.test_compatibility_all_versions("c-value", Schema(V2, "AVRO")) is True
    assert c.test_compatibility("new-value", Schema(V1, "AVRO")) is True  # latest of nothing
    for version, code in ((9, 40402), (0, 42202)):
        with pytest.raises(SchemaRegistryError) as err:
            c.test_compatibility("c-value", Schema(V1, "AVRO"), version=version)
        assert _code(err) == code, version
    with pytest.raises(SchemaRegistryError) as err:
        c.register_schema("c-value", Schema(V2_NO_DEFAULT, "AVRO"))
    assert _code(err) == 409

    assert c.set_compatibility("c-value", "NONE") == {"compatibility": "NONE"}  # as Confluent
    assert c.get_compatibility("c-value") == "NONE"
    assert _level(c.get_config("c-value").compatibility_level) == "NONE"
    full = ServerConfig(compatibility_level=ConfigCompatibilityLevel.FULL)
    assert c.set_config("a/b-value", full) == {"compatibility": "FULL"}  # as Confluent
    assert _level(c.get_config("a/b-value").compatibility_level) == "FULL"
    assert _level(c.delete_config("a/b-value").compatibility_level) == "FULL"
    with pytest.raises(SchemaRegistryError) as err:
        c.get_config("a/b-value")
    assert _code(err) == 40408
    assert _level(c.get_config().compatibility_level) == "BACKWARD"

    assert c.get_global_mode() == "READWRITE"
    assert c.update_global_mode("READWRITE") == "READWRITE"
    with pytest.raises(SchemaRegistryError) as err:
        c.get_mode("c-value")
    assert _code(err) == 40409
    assert requests.get(f"{url}/mode/c-value", params={"defaultToGlobal": "true"},
                        timeout=10).json() == {"mode": "READWRITE"}
    with pytest.raises(SchemaRegistryError) as err:
        c.update_mode("c-value", "READONLY")
    assert _code(err) == 42205
    with pytest.raises(SchemaRegistryError) as err:
        c.delete_mode("c-value")
    assert _code(err) == 40409


def test_unsupported_calls_are_clear_4xx(url: str) -> None:
    c = _client(url)
    # Confluent 8's GUID look-ups and associations: every call of the client that reaches
    # them gets a 4xx, never a 5xx or an answer it could mistake for success.
    association = AssociationCreateOrUpdateRequest(resource_name="r", resource_namespace="ns")
    for call in (lambda: c.get_schema_by_guid("0f5c3e3a-0000-0000-0000-000000000000"),
                 lambda: c.get_associations_by_resource_name("r", "ns"),
                 lambda: c.create_association(association),
                 lambda: c.delete_associations("r-id", resource_type="topic")):
        with pytest.raises(SchemaRegistryError) as err:
            call()
        assert 400 <= err.value.http_status_code < 500
    with pytest.raises(SchemaRegistryError) as err:
        c.register_schema("p-value", Schema('{"type": "string"}', "PROTOBUF"))
    assert _code(err) == 42201
