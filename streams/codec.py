"""Avro codec for every ClipGuard topic.

`schemas/*.avsc` is the only definition of each message; this module parses them once and
serializes records (plain dicts, typed in streams/records.py) as Avro single-object encoding:
the marker ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the schema's parsing canonical form, then the schemaless
Avro body. A consumer in any language finds the writer's schema in `schemas/` by fingerprint.

The framing is a separate small class so a second one (the Confluent wire format: magic byte 0 +
4-byte registry id) can be added without touching the Avro part.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import fastavro
import fastavro.schema

from streams.errors import CodecError
from streams.records import ClassificationResult, ClipRequest, DeadLetter, DecodedClip

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

R = TypeVar("R")


@dataclass(frozen=True)
class RecordType(Generic[R]):
    """An Avro record's full name, tied to its Python type so `parse` returns that type."""

    name: str


REQUEST = RecordType[ClipRequest]("clipguard.ClipRequest")
DECODED = RecordType[DecodedClip]("clipguard.DecodedClip")
RESULT = RecordType[ClassificationResult]("clipguard.ClassificationResult")
DEAD_LETTER = RecordType[DeadLetter]("clipguard.DeadLetter")
RECORD_TYPES = (REQUEST, DECODED, RESULT, DEAD_LETTER)


@dataclass(frozen=True)
class Schema:
    name: str
    parsed: Any
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian, as written on the wire


def load_schemas(directory: Path = SCHEMA_DIR) -> dict[str, Schema]:
    schemas = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            parsed = fastavro.schema.load_schema(str(path), _write_hint=False)
        except Exception as exc:  # fastavro raises several unrelated types here
            raise CodecError(f"schema {path.name} does not parse: {exc}") from exc
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        fp = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        name = path.name.removesuffix(".avsc")
        schemas[name] = Schema(name, fastavro.parse_schema(parsed), canonical, fp)
    return schemas


class Framing(Protocol):
    def frame(self, schema: Schema, body: bytes) -> bytes: ...

    def unframe(self, data: bytes, schemas: Mapping[bytes, Schema]) -> tuple[Schema, int]:
        """Return the writer's schema and where the Avro body starts."""
        ...


class SingleObjectFraming:
    MARKER = b"\xc3\x01"
    HEADER_LEN = 10

    def frame(self, schema: Schema, body: bytes) -> bytes:
        return self.MARKER + schema.fingerprint + body

    def unframe(self, data: bytes, schemas: Mapping[bytes, Schema]) -> tuple[Schema, int]:
        if len(data) < self.HEADER_LEN:
            raise CodecError(f"message of {len(data)} bytes is shorter than the 10-byte header")
        if data[:2] != self.MARKER:
            raise CodecError(f"unknown marker {data[:2].hex()} (Avro single-object is c301)")
        fp = data[2:10]
        schema = schemas.get(fp)
        if schema is None:
            raise CodecError(f"unknown schema fingerprint {fp.hex()}")
        return schema, self.HEADER_LEN


class AvroCodec:
    def __init__(
        self, schemas: Mapping[str, Schema] | None = None, framing: Framing | None = None
    ) -> None:
        self.schemas = dict(schemas or load_schemas())
        self.framing = framing or SingleObjectFraming()
        self._by_fingerprint = {s.fingerprint: s for s in self.schemas.values()}

    def serialize(self, kind: RecordType[R], record: R) -> bytes:
        schema = self.schemas.get(kind.name)
        if schema is None:
            raise CodecError(f"no schema named {kind.name}; known: {sorted(self.schemas)}")
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, schema.parsed, record, strict=True)
        except Exception as exc:  # ValueError, TypeError, KeyError... from fastavro
            raise CodecError(f"record does not match {kind.name}: {exc}") from exc
        return self.framing.frame(schema, buf.getvalue())

    def parse(self, data: bytes, expect: RecordType[R]) -> R:
        """The record in `data`, which must have been written with `expect`'s schema."""
        schema, start = self.framing.unframe(data, self._by_fingerprint)
        if schema.name != expect.name:
            raise CodecError(f"expected a {expect.name} message, got a {schema.name}")
        body = io.BytesIO(memoryview(data)[start:])
        try:
            record = fastavro.schemaless_reader(body, schema.parsed, None)
        except Exception as exc:  # EOFError, struct errors, UnicodeDecodeError...
            raise CodecError(f"{schema.name} body does not decode: {exc}") from exc
        left = len(data) - start - body.tell()
        if left:
            raise CodecError(f"{schema.name} body has {left} bytes left over after the record")
        if not isinstance(record, dict):
            raise CodecError(f"{schema.name} is not a record schema")
        return cast(R, record)


@cache
def default_codec() -> AvroCodec:
    """The codec over the project's own schemas, parsed once per process."""
    return AvroCodec()
