"""The schema registry's HTTP API in-process (Flask test client over an in-memory store)."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterable
from typing import Any

import fastavro
import pytest
from flask.testing import FlaskClient

from schema_registry.app import create_app
from schema_registry.service import SchemaRegistry
from schema_registry.store import RegistryState

SUBJECT = "ns-test-value"

# ns2.Outer's field `c` is written "Inner": relative to its enclosing namespace ns2, so it is
# ns2.Inner {y: string}, not the ns1.Inner {x: int} that happens to be defined first.
OUTER = {"type": "record", "name": "Outer", "namespace": "ns2", "fields": [
    {"name": "a", "type": {"type": "record", "name": "Inner", "namespace": "ns1",
                           "fields": [{"name": "x", "type": "int"}]}},
    {"name": "b", "type": {"type": "record", "name": "Inner",
                           "fields": [{"name": "y", "type": "string"}]}},
    {"name": "c", "type": "Inner"},
]}


def _with_c_type(type_name: str) -> dict:
    schema = copy.deepcopy(OUTER)
    schema["fields"][2]["type"] = type_name
    return schema


class _MemoryStore:
    """The store interface SchemaRegistry uses, applying records as a topic replay would."""

    def __init__(self) -> None:
        self.state = RegistryState()
        self.records: list[tuple[bytes, bytes | None]] = []   # the topic, in order

    def append(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        for key, value in records:
            self.records.append((key, value))
            self.state.apply(key, value)


@pytest.fixture()
def client() -> FlaskClient:
    registry = SchemaRegistry(_MemoryStore(), "BACKWARD")  # type: ignore[arg-type]
    return create_app(registry).test_client()


def _register(client: FlaskClient, schema: Any) -> Any:
    return client.post(f"/subjects/{SUBJECT}/versions", json={"schema": json.dumps(schema)})


# --- name resolution: a name without a dot is relative to its enclosing namespace ----------

def test_spelling_out_the_enclosing_namespace_is_no_change(client: FlaskClient) -> None:
    assert _register(client, OUTER).status_code == 200
    resp = _register(client, _with_c_type("ns2.Inner"))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["version"] == 2
    check = client.post(f"/compatibility/subjects/{SUBJECT}/versions/1",
                        json={"schema": json.dumps(_with_c_type("ns2.Inner"))})
    assert check.get_json() == {"is_compatible": True}


def test_pointing_at_the_other_namespace_is_refused(client: FlaskClient) -> None:
    # Premise: the change breaks readers, as fastavro shows on a record written with v1.
    written = io.BytesIO()
    fastavro.schemaless_writer(written, fastavro.parse_schema(OUTER),
                               {"a": {"x": 1}, "b": {"y": "b"}, "c": {"y": "c"}})
    written.seek(0)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(written, fastavro.parse_schema(OUTER),
                                   fastavro.parse_schema(_with_c_type("ns1.Inner")))

    assert _register(client, OUTER).status_code == 200
    resp = _register(client, _with_c_type("ns1.Inner"))
    assert resp.status_code == 409
    assert resp.get_json()["error_code"] == 409
    assert "'x'" in resp.get_json()["message"] and "ns1.Inner" in resp.get_json()["message"]
    assert client.get(f"/subjects/{SUBJECT}/versions").get_json() == [1]


# --- validation: what the Avro specification rejects is an invalid schema (42201) ----------

def _record(**overrides: Any) -> dict:
    return {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}], **overrides}


@pytest.mark.parametrize(("schema", "problem"), [
    (_record(namespace="foo-bar-baz"), "foo-bar-baz is not a valid Avro name"),
    (_record(fields=[{"name": "a", "type": "int"}, {"name": "a", "type": "string"}]),
     "Field name a already in use"),
    (_record(name="1bad"), "1bad is not a valid Avro name"),
    (_record(fields=[{"name": "f-x", "type": "int"}]), "field name 'f-x' of record R is not"),
    (_record(fields=[{"name": "u", "type": ["int", "int"]}]), "int type already in Union"),
    (_record(fields=[{"name": "u", "type": ["null", ["int", "string"]]}]),
     "Unions cannot contain other unions"),
    ({"type": "fixed", "name": "F", "size": -1}, "positive integer for size"),
], ids=["namespace-with-dashes", "duplicate-field-names", "name-starts-with-digit",
        "field-name-with-dash", "duplicate-union-branch", "nested-union", "negative-fixed-size"])
def test_schema_the_specification_rejects_is_invalid(client: FlaskClient, schema: Any,
                                                     problem: str) -> None:
    resp = _register(client, schema)
    assert resp.status_code == 422
    body = resp.get_json()
    assert body["error_code"] == 42201
    assert problem in body["message"]
    assert client.get(f"/subjects/{SUBJECT}/versions").get_json()["error_code"] == 40401


def test_valid_names_and_zero_size_fixed_are_accepted(client: FlaskClient) -> None:
    schema = _record(namespace="com.example_1", name="_R2", fields=[
        {"name": "_f1", "type": {"type": "fixed", "name": "Empty", "size": 0}},
        {"name": "u", "type": ["null", "int", {"type": "array", "items": "int"}]}])
    assert _register(client, schema).status_code == 200


# --- Confluent's REST conformance: deletes, version numbers, encoded subjects ------------

def _v(n: int) -> dict:
    fields = [{"name": "a", "type": "int"}] + [
        {"name": f"f{i}", "type": "int", "default": 0} for i in range(n - 1)]
    return {"type": "record", "name": "R", "fields": fields}


def _reg(client: FlaskClient, subject: str, schema: dict) -> Any:
    return client.post(f"/subjects/{subject}/versions", json={"schema": json.dumps(schema)})


def test_subject_with_a_slash_travels_as_percent_2f(client: FlaskClient) -> None:
    assert _reg(client, "org%2Fthing-value", _v(1)).status_code == 200
    assert client.get("/subjects").get_json() == ["org/thing-value"]
    assert client.get("/subjects/org%2Fthing-value/versions").get_json() == [1]
    assert client.get("/subjects/org%2Fthing-value/versions/latest").get_json()[
        "subject"] == "org/thing-value"
    assert client.delete("/subjects/org%2Fthing-value").get_json() == [1]


def test_delete_codes_follow_confluent() -> None:
    store = _MemoryStore()
    client = create_app(SchemaRegistry(store, "BACKWARD")).test_client()  # type: ignore[arg-type]
    ids = [_reg(client, "s", _v(n)).get_json()["id"] for n in (1, 2)]
    code = lambda resp: resp.get_json()["error_code"]  # noqa: E731
    assert code(client.delete("/subjects/s/versions/1?permanent=true")) == 40407
    assert code(client.delete("/subjects/s?permanent=true")) == 40405
    assert client.delete("/subjects/s/versions/1").get_json() == 1
    assert code(client.delete("/subjects/s/versions/1")) == 40406
    assert code(client.get("/subjects/s/versions/1")) == 40402
    assert client.get("/subjects/s/versions/1?deleted=true").get_json()["id"] == ids[0]
    assert client.delete("/subjects/s").get_json() == [2]
    assert code(client.delete("/subjects/s")) == 40404
    assert client.delete("/subjects/s?permanent=true").get_json() == [1, 2]
    assert code(client.delete("/subjects/s")) == 40401
    for bad in ("0", "-2", "x", str(2**31)):
        assert code(client.get(f"/subjects/s/versions/{bad}")) == 42202, bad
    # A hard delete is a record, not a tombstone: replayed (or compacted), the ids stay
    # resolvable and are never handed out again.
    replayed = _MemoryStore()
    for key, value in store.records:   # the same apply() a Kafka replay uses
        replayed.state.apply(key, value)
    assert replayed.state.subjects == {}
    assert set(replayed.state.schemas) == set(ids)
    assert replayed.state.next_id == max(ids) + 1


def test_compatibility_against_a_missing_version_is_40402(client: FlaskClient) -> None:
    body = {"schema": json.dumps(_v(2))}
    assert client.post("/compatibility/subjects/new/versions/latest",
                       json=body).get_json() == {"is_compatible": True}
    assert client.post("/compatibility/subjects/new/versions/3",
                       json=body).get_json()["error_code"] == 40402
    _reg(client, "new", _v(1))
    assert client.post("/compatibility/subjects/new/versions/3",
                       json=body).get_json()["error_code"] == 40402
    assert client.post("/compatibility/subjects/new/versions/0",
                       json=body).get_json()["error_code"] == 42202
    assert client.post("/compatibility/subjects/new/versions/1",
                       json=body).get_json() == {"is_compatible": True}


# --- the conformance suite keeps up with confluent-kafka's client ------------------------------

# Methods of SchemaRegistryClient that never reach the server.
_CLIENT_SIDE_ONLY = frozenset({"clear_caches", "clear_latest_caches", "close", "config",
                               "new_client"})


def test_conformance_suite_calls_every_server_call_of_the_client() -> None:
    """tests/integration/test_registry_conformance.py drives every call of the official
    client against the registry; a confluent-kafka upgrade that adds one fails here until
    the suite calls it (and the registry answers it as Confluent does, or with a 4xx)."""
    import inspect
    import re
    from pathlib import Path

    from confluent_kafka.schema_registry import SchemaRegistryClient

    suite = (Path(__file__).resolve().parents[1] / "integration"
             / "test_registry_conformance.py").read_text()
    called = set(re.findall(r"\.([a-z_]+)\(", suite))
    offered = {name for name, _ in inspect.getmembers(SchemaRegistryClient, inspect.isfunction)
               if not name.startswith("_")}
    assert _CLIENT_SIDE_ONLY <= offered, "a client-side method is gone: update the list"
    assert sorted(offered - _CLIENT_SIDE_ONLY - called) == []
