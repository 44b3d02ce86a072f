"""Avro compatibility rules: known compatible/incompatible pairs and properties."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.compatibility import (
    CompatibilityLevel,
    SchemaParseError,
    canonical_schema,
    check_compatibility,
    parse_schema_text,
    reader_writer_incompatibilities,
)


def record(*fields: dict, name: str = "Reading") -> dict:
    return {"type": "record", "name": name, "namespace": "dcmms", "fields": list(fields)}


V1 = record({"name": "event_id", "type": "string"}, {"name": "value", "type": "double"})
V2_DEFAULTED = record(
    {"name": "event_id", "type": "string"},
    {"name": "value", "type": "double"},
    {"name": "unit", "type": "string", "default": ""},
)
V2_NO_DEFAULT = record(
    {"name": "event_id", "type": "string"},
    {"name": "value", "type": "double"},
    {"name": "unit", "type": "string"},
)


def compatible(reader: object, writer: object) -> bool:
    return reader_writer_incompatibilities(reader, writer) == []


# --- records ---------------------------------------------------------------

def test_added_field_with_default_is_backward_compatible() -> None:
    assert check_compatibility(V2_DEFAULTED, [V1], "BACKWARD") == []


def test_added_field_without_default_is_not_backward_compatible() -> None:
    problems = check_compatibility(V2_NO_DEFAULT, [V1], "BACKWARD")
    assert len(problems) == 1
    assert "unit" in problems[0] and "no default" in problems[0]


def test_removed_field_is_backward_but_not_forward_compatible_without_default() -> None:
    assert check_compatibility(V1, [V2_NO_DEFAULT], "BACKWARD") == []
    assert check_compatibility(V1, [V2_NO_DEFAULT], "FORWARD") != []
    # With a default on the removed field, old readers cope: FULL compatible.
    assert check_compatibility(V1, [V2_DEFAULTED], "FULL") == []


def test_field_alias_counts_as_rename() -> None:
    renamed = record({"name": "id", "type": "string", "aliases": ["event_id"]},
                     {"name": "value", "type": "double"})
    assert compatible(renamed, V1)
    not_aliased = record({"name": "id", "type": "string"}, {"name": "value", "type": "double"})
    assert not compatible(not_aliased, V1)


def test_record_names_must_match_unless_aliased() -> None:
    other = copy.deepcopy(V1)
    other["name"] = "Other"
    assert not compatible(other, V1)
    other["aliases"] = ["Reading"]
    assert compatible(other, V1)
    # Namespaces are not compared (unqualified names), as in Avro's resolution.
    namespaced = copy.deepcopy(V1)
    namespaced["namespace"] = "elsewhere"
    assert compatible(namespaced, V1)


# --- primitives ------------------------------------------------------------

@pytest.mark.parametrize(
    ("writer", "reader"),
    [("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"),
     ("long", "double"), ("float", "double"), ("string", "bytes"), ("bytes", "string")],
)
def test_promotions(writer: str, reader: str) -> None:
    assert compatible(reader, writer)


@pytest.mark.parametrize(
    ("writer", "reader"),
    [("long", "int"), ("double", "float"), ("double", "long"), ("string", "int"),
     ("boolean", "int"), ("null", "string"), ("float", "long")],
)
def test_non_promotions(writer: str, reader: str) -> None:
    assert not compatible(reader, writer)


def test_field_type_change_reports_path() -> None:
    narrowed = record({"name": "event_id", "type": "string"}, {"name": "value", "type": "int"})
    (problem,) = reader_writer_incompatibilities(narrowed, V1)
    assert "value" in problem and "int" in problem and "double" in problem


# --- enums -----------------------------------------------------------------

def enum(symbols: list[str], default: str | None = None) -> dict:
    e: dict = {"type": "enum", "name": "SensorType", "symbols": symbols}
    if default is not None:
        e["default"] = default
    return e


def test_enum_reader_must_contain_writer_symbols() -> None:
    assert compatible(enum(["A", "B", "C"]), enum(["A", "B"]))
    problems = reader_writer_incompatibilities(enum(["A", "B"]), enum(["A", "B", "C"]))
    assert problems and "['C']" in problems[0]


def test_enum_reader_default_accepts_unknown_symbols() -> None:
    assert compatible(enum(["A", "OTHER"], default="OTHER"), enum(["A", "B", "OTHER"]))


# --- unions ----------------------------------------------------------------

def test_optional_field_added_with_null_default() -> None:
    new = record({"name": "event_id", "type": "string"}, {"name": "value", "type": "double"},
                 {"name": "note", "type": ["null", "string"], "default": None})
    assert check_compatibility(new, [V1], "FULL") == []


def test_writer_union_needs_every_branch_readable() -> None:
    assert compatible(["null", "string", "long"], ["null", "string"])
    assert compatible(["null", "double"], ["null", "int"])  # promotion inside a union
    assert not compatible("string", ["null", "string"])
    assert compatible(["null", "string"], "string")
    problems = reader_writer_incompatibilities(["null", "string"], ["null", "string", "long"])
    assert problems and "long" in problems[0]


# --- complex types ---------------------------------------------------------

def test_arrays_maps_and_fixed() -> None:
    assert compatible({"type": "array", "items": "long"}, {"type": "array", "items": "int"})
    assert not compatible({"type": "array", "items": "int"}, {"type": "array", "items": "long"})
    assert compatible({"type": "map", "values": "double"}, {"type": "map", "values": "float"})
    assert not compatible({"type": "map", "values": "int"}, {"type": "map", "values": "string"})
    assert not compatible({"type": "array", "items": "int"}, {"type": "map", "values": "int"})
    fixed8 = {"type": "fixed", "name": "Hash", "size": 8}
    fixed16 = {"type": "fixed", "name": "Hash", "size": 16}
    assert compatible(fixed8, dict(fixed8))
    assert not compatible(fixed16, fixed8)


def test_nested_records_and_named_references() -> None:
    location = {"type": "record", "name": "Location",
                "fields": [{"name": "lat", "type": "double"}]}
    writer = record({"name": "here", "type": location}, {"name": "there", "type": "Location"})
    location2 = {"type": "record", "name": "Location",
                 "fields": [{"name": "lat", "type": "double"},
                            {"name": "lon", "type": "double"}]}
    reader_bad = record({"name": "here", "type": location2}, {"name": "there", "type": "Location"})
    problems = reader_writer_incompatibilities(reader_bad, writer)
    # Both the inline definition and the by-name reference are checked.
    assert len(problems) == 2 and all("lon" in p for p in problems)
    location2["fields"][1]["default"] = 0.0
    assert compatible(reader_bad, writer)


def test_recursive_schema_terminates() -> None:
    node = {"type": "record", "name": "Node", "fields": [
        {"name": "value", "type": "int"},
        {"name": "next", "type": ["null", "Node"], "default": None}]}
    node_long = copy.deepcopy(node)
    node_long["fields"][0]["type"] = "long"
    assert compatible(node_long, node)
    assert not compatible(node, node_long)


# --- levels ----------------------------------------------------------------

def test_transitive_checks_every_version() -> None:
    v1 = record({"name": "a", "type": "int"})
    v2 = record({"name": "a", "type": "int"}, {"name": "b", "type": "int", "default": 0})
    v3 = record({"name": "a", "type": "int"}, {"name": "b", "type": "int"})  # b default dropped
    # v3 reads v2 data fine (b present) but not v1 data (b missing, no default).
    assert check_compatibility(v3, [v1, v2], CompatibilityLevel.BACKWARD) == []
    problems = check_compatibility(v3, [v1, v2], CompatibilityLevel.BACKWARD_TRANSITIVE)
    assert len(problems) == 1 and "#1" in problems[0]


def test_none_and_first_version_always_compatible() -> None:
    assert check_compatibility("int", ["string"], "NONE") == []
    assert check_compatibility("int", [], "FULL_TRANSITIVE") == []
    with pytest.raises(ValueError):
        check_compatibility("int", ["string"], "SIDEWAYS")


# --- parsing and canonical form -------------------------------------------

def test_parse_rejects_bad_text_and_bad_schema() -> None:
    with pytest.raises(SchemaParseError, match="JSON"):
        parse_schema_text("{not json")
    with pytest.raises(SchemaParseError, match="Avro"):
        parse_schema_text(json.dumps({"type": "record", "name": "R", "fields": [
            {"name": "x", "type": "no_such_type"}]}))


def test_canonical_form_ignores_layout_but_keeps_defaults() -> None:
    a = '{"type":"record","name":"R","fields":[{"name":"x","type":{"type":"int"}}]}'
    b = '{ "fields": [ {"type": "int", "name": "x"} ], "name": "R", "type": "record" }'
    assert canonical_schema(json.loads(a)) == canonical_schema(json.loads(b))
    c = '{"type":"record","name":"R","fields":[{"name":"x","type":"int","default":1}]}'
    assert canonical_schema(json.loads(c)) != canonical_schema(json.loads(b))


# --- properties ------------------------------------------------------------

_primitive = st.sampled_from(["null", "boolean", "int", "long", "float", "double", "bytes",
                              "string"])
_types = st.recursive(
    _primitive,
    lambda inner: st.one_of(
        st.builds(lambda t: {"type": "array", "items": t}, inner),
        st.builds(lambda t: {"type": "map", "values": t}, inner),
    ),
    max_leaves=4,
)
_fields = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), _types, max_size=5)


def _rec(fields: dict) -> dict:
    return record(*({"name": k, "type": v} for k, v in fields.items()))


@settings(max_examples=200, deadline=None)
@given(_fields)
def test_every_schema_reads_itself(fields: dict) -> None:
    schema = _rec(fields)
    assert check_compatibility(schema, [copy.deepcopy(schema)], "FULL_TRANSITIVE") == []


@settings(max_examples=200, deadline=None)
@given(_fields, _fields)
def test_checker_never_raises_and_matches_field_rule(old: dict, new: dict) -> None:
    problems = reader_writer_incompatibilities(_rec(new), _rec(old))
    assert isinstance(problems, list)
    # A reader field absent from the writer (none have defaults here) is always reported.
    for name in set(new) - set(old):
        assert any(f".{name}:" in p and "no default" in p for p in problems)


# --- names: relative to the enclosing namespace, as Apache Avro resolves them ---------------

def _outer(c_type: object, a_name: str = "Inner", a_namespace: str | None = "ns1",
           b_namespace: str | None = None) -> dict:
    a = {"type": "record", "name": a_name, "fields": [{"name": "x", "type": "int"}]}
    b = {"type": "record", "name": "Inner", "fields": [{"name": "y", "type": "string"}]}
    if a_namespace is not None:
        a["namespace"] = a_namespace
    if b_namespace is not None:
        b["namespace"] = b_namespace
    return {"type": "record", "name": "Outer", "namespace": "ns2", "fields": [
        {"name": "a", "type": a}, {"name": "b", "type": b}, {"name": "c", "type": c_type}]}


def _wrap(namespace: str, ref: str) -> dict:
    return {"type": "record", "name": "Wrap", "namespace": namespace,
            "fields": [{"name": "w", "type": ref}]}


_NAMESPACE_VARIANTS = {
    "short": _outer("Inner"),                                  # ns2.Inner, by its namespace
    "full-ns2": _outer("ns2.Inner"),
    "full-ns1": _outer("ns1.Inner"),
    "dotted-definition": _outer("Inner", a_name="ns1.Inner", a_namespace=None),
    "explicit-ns2": _outer("Inner", b_namespace="ns2"),
    "wrap-in-ns1": _outer(_wrap("ns1", "Inner")),              # ns1.Inner, by Wrap's namespace
    "wrap-full-ns2": _outer(_wrap("ns1", "ns2.Inner")),
}


def test_unqualified_names_resolve_in_the_enclosing_namespace() -> None:
    assert compatible(_NAMESPACE_VARIANTS["full-ns2"], _NAMESPACE_VARIANTS["short"])
    assert compatible(_NAMESPACE_VARIANTS["short"], _NAMESPACE_VARIANTS["full-ns2"])
    assert not compatible(_NAMESPACE_VARIANTS["full-ns1"], _NAMESPACE_VARIANTS["short"])
    assert not compatible(_NAMESPACE_VARIANTS["wrap-in-ns1"], _NAMESPACE_VARIANTS["wrap-full-ns2"])


@pytest.mark.parametrize("writer", sorted(_NAMESPACE_VARIANTS))
@pytest.mark.parametrize("reader", sorted(_NAMESPACE_VARIANTS))
def test_namespace_verdicts_agree_with_apache_avro(reader: str, writer: str) -> None:
    import avro.schema
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    def parse(name: str) -> object:
        return avro.schema.parse(json.dumps(_NAMESPACE_VARIANTS[name]))

    theirs = ReaderWriterCompatibilityChecker().get_compatibility(parse(reader), parse(writer))
    ours = compatible(_NAMESPACE_VARIANTS[reader], _NAMESPACE_VARIANTS[writer])
    assert ours == (theirs.compatibility is SchemaCompatibilityType.compatible)
