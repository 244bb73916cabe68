"""The published result JSON: the documentation's example survives Avro and rendering."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from streams.codec import RESULT, default_codec
from streams.results import iso_timestamp, new_clip_id, render_result, result_from_json

EXAMPLE = json.loads((Path(__file__).parent / "fixtures" / "result-example.json").read_text())


def test_documented_example_round_trips_through_avro_key_for_key():
    codec = default_codec()
    record = result_from_json(EXAMPLE)
    rendered = render_result(codec.decode(codec.encode(RESULT, record), expect=RESULT))
    assert rendered == EXAMPLE
    assert list(rendered) == list(EXAMPLE)
    assert list(rendered["video"]["specs"]) == list(EXAMPLE["video"]["specs"])
    # JSON text, not only value: integral fps stays an integer as in the documentation.
    assert '"original.fps": 3,' in json.dumps(rendered)


def test_ids_are_object_ids_that_carry_their_creation_time():
    created = datetime(2024, 5, 14, 14, 13, 37, tzinfo=UTC).timestamp()
    first, second = new_clip_id(created), new_clip_id(created)
    assert re.fullmatch(r"[0-9a-f]{24}", first)
    assert first[:8] == "66437191" == EXAMPLE["id"][:8]
    assert first != second
    assert new_clip_id(created + 1) > second


def test_timestamps_have_milliseconds_and_offset():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", iso_timestamp())
