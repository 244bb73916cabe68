"""Avro single-object codec: exact framing bytes, typed errors, round trips."""

import fastavro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import (
    RECORD_TYPES,
    REQUEST,
    RESULT,
    AvroCodec,
    default_codec,
    load_schemas,
)
from streams.errors import CodecError

codec = default_codec()


def a_request(**changes):
    record = {
        "id": "664371916d24ab9cf81140ec",
        "tenant": "tenant",
        "camera_id": "134188-VI08",
        "parent_id": "0" * 24,
        "analyse_id": 3373550353,
        "video_uri": "file:///media/video.mov",
        "videoname": "video.mov",
        "filesize": 786800,
        "metadata": {"no_trans": "20818", "camera_id": 134188},
        "created_at": "2024-05-14T16:13:37.156+02:00",
    }
    record.update(changes)
    return record


def test_every_message_type_has_a_schema():
    assert {kind.name for kind in RECORD_TYPES} <= set(load_schemas())


def test_header_is_marker_then_little_endian_crc64_fingerprint():
    schema = codec.schemas[REQUEST.name]
    canonical = fastavro.schema.to_parsing_canonical_form(
        fastavro.schema.load_schema("schemas/clipguard.ClipRequest.avsc", _write_hint=False)
    )
    # Rabin CRC-64-AVRO computed here independently of fastavro, then written little-endian.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in canonical.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    data = codec.serialize(REQUEST, a_request())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fp.to_bytes(8, "little") == schema.fingerprint


def test_round_trip_keeps_every_field():
    record = a_request()
    assert codec.parse(codec.serialize(REQUEST, record), expect=REQUEST) == record


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 10-byte header"),
        (b"\xc3\x01\x00", "shorter than the 10-byte header"),
        (b"\x00" * 20, "unknown marker"),
        (b"\xc3\x01" + b"\xff" * 8 + b"body", "unknown schema fingerprint"),
        (b'{"id": "json is not avro"}', "unknown marker"),
    ],
)
def test_bad_framing_is_a_typed_error(data, message):
    with pytest.raises(CodecError, match=message):
        codec.parse(data, expect=REQUEST)


def test_truncated_body_and_trailing_bytes_are_errors():
    data = codec.serialize(REQUEST, a_request())
    with pytest.raises(CodecError, match="does not decode"):
        codec.parse(data[:-5], expect=REQUEST)
    with pytest.raises(CodecError, match="left over"):
        codec.parse(data + b"\x00", expect=REQUEST)


def test_wrong_message_type_is_refused():
    data = codec.serialize(REQUEST, a_request())
    with pytest.raises(CodecError, match=r"expected a clipguard\.ClassificationResult"):
        codec.parse(data, expect=RESULT)


def test_record_not_matching_schema_names_the_schema():
    with pytest.raises(CodecError, match=r"does not match clipguard\.ClipRequest"):
        codec.serialize(REQUEST, a_request(analyse_id="not a number"))


def test_codec_accepts_another_framing():
    class Tagged:
        def frame(self, schema, body):
            return schema.name.encode() + b"|" + body

        def unframe(self, data, schemas):
            name, _, _ = data.partition(b"|")
            by_name = {s.name: s for s in schemas.values()}
            return by_name[name.decode()], len(name) + 1

    tagged = AvroCodec(framing=Tagged())
    data = tagged.serialize(REQUEST, a_request())
    assert data.startswith(b"clipguard.ClipRequest|")
    assert tagged.parse(data, expect=REQUEST) == a_request()


text = st.text(max_size=40)
metadata_value = st.one_of(
    text,
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    tenant=text,
    analyse_id=st.integers(-(2**63), 2**63 - 1),
    filesize=st.none() | st.integers(0, 2**62),
    metadata=st.dictionaries(text, metadata_value, max_size=5),
)
def test_requests_round_trip(tenant, analyse_id, filesize, metadata):
    record = a_request(tenant=tenant, analyse_id=analyse_id, filesize=filesize, metadata=metadata)
    assert codec.parse(codec.serialize(REQUEST, record), expect=REQUEST) == record


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_anything_but_codec_error(data):
    try:
        codec.parse(data, expect=REQUEST)
    except CodecError:
        pass
