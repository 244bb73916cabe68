"""The TypedDicts of streams/records.py say exactly what the .avsc files say.

A field added to, removed from, renamed or retyped in a schema fails here until the Python type
follows (and with it mypy's view of every place that builds or reads that record).
"""

import json
import types
import typing

import pytest

from streams import records
from streams.codec import RECORD_TYPES, SCHEMA_DIR

AVRO_PRIMITIVES = {
    "string": str,
    "bytes": bytes,
    "int": int,
    "long": int,
    "double": float,
    "float": float,
    "boolean": bool,
    "null": type(None),
}


def schema_files():
    return {path.stem: json.loads(path.read_text()) for path in SCHEMA_DIR.glob("*.avsc")}


def named_records():
    """Every named record in the schema files, nested ones included, by short name."""
    found = {}

    def visit(schema):
        if isinstance(schema, dict):
            if schema.get("type") == "record":
                found[schema["name"]] = schema
                for field in schema["fields"]:
                    visit(field["type"])
            else:
                visit(schema.get("items"))
                visit(schema.get("values"))
        elif isinstance(schema, list):
            for branch in schema:
                visit(branch)

    for schema in schema_files().values():
        visit(schema)
    return found


def python_type(avro):
    """The Python annotation an Avro type maps to."""
    if isinstance(avro, list):
        branches = [python_type(branch) for branch in avro]
        union = branches[0]
        for branch in branches[1:]:
            union = union | branch
        return union
    if isinstance(avro, dict):
        kind = avro["type"]
        if kind == "array":
            return list[python_type(avro["items"])]
        if kind == "map":
            return dict[str, python_type(avro["values"])]
        if kind == "record":
            return getattr(records, avro["name"])
        return python_type(kind)
    if avro in AVRO_PRIMITIVES:
        return AVRO_PRIMITIVES[avro]
    return getattr(records, avro.rsplit(".", 1)[-1])  # a named type, e.g. clipguard.VideoSpecs


def same_type(a, b):
    if isinstance(a, types.UnionType) or isinstance(b, types.UnionType):
        return set(typing.get_args(a) or (a,)) == set(typing.get_args(b) or (b,))
    return a == b


def mismatches(schema, typed):
    """How the TypedDict `typed` differs from the Avro record `schema` (empty: they agree)."""
    hints = typing.get_type_hints(typed)
    names = [field["name"] for field in schema["fields"]]
    if list(hints) != names:
        return [f"fields {list(hints)} != schema fields {names}"]
    return [
        f"{field['name']}: schema {python_type(field['type'])}, records.py {hints[field['name']]}"
        for field in schema["fields"]
        if not same_type(hints[field["name"]], python_type(field["type"]))
    ]


@pytest.mark.parametrize("name", sorted(named_records()))
def test_each_record_has_a_typed_dict_with_the_schema_fields_in_order(name):
    assert mismatches(named_records()[name], getattr(records, name)) == []


def test_every_top_level_schema_is_a_record_type_of_the_codec():
    assert {kind.name for kind in RECORD_TYPES} | {"clipguard.VideoSpecs"} == set(schema_files())


def test_a_schema_change_the_code_forgot_is_caught():
    schema = named_records()["ClipRequest"]
    added = {**schema, "fields": [*schema["fields"], {"name": "site", "type": "string"}]}
    retyped = {
        **schema,
        "fields": [
            {**f, "type": "string"} if f["name"] == "analyse_id" else f for f in schema["fields"]
        ],
    }
    optional = {
        **schema,
        "fields": [
            {**f, "type": ["null", f["type"]]} if f["name"] == "tenant" else f
            for f in schema["fields"]
        ],
    }
    for changed in (added, retyped, optional):
        assert mismatches(changed, records.ClipRequest) != []
