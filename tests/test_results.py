"""The published result JSON: the documentation's example survives Avro and rendering."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import RESULT, default_codec
from streams.results import iso_timestamp, new_clip_id, render_result, result_from_json

EXAMPLE = json.loads((Path(__file__).parent / "fixtures" / "result-example.json").read_text())


def test_documented_example_round_trips_through_avro_key_for_key():
    codec = default_codec()
    record = result_from_json(EXAMPLE)
    rendered = render_result(codec.parse(codec.serialize(RESULT, record), expect=RESULT))
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


text = st.text(max_size=30)
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
specs = st.fixed_dictionaries(
    {
        "height": st.integers(1, 4096),
        "original.width": st.integers(1, 8192),
        "duration": finite,
        "fps": finite,
        "nframes": st.integers(0, 500),
        "original.fps": finite,
        "original.height": st.integers(1, 8192),
        "original.nframes": st.integers(0, 100_000),
        "width": st.integers(1, 4096),
    }
)
results = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[0-9a-f]{24}", fullmatch=True),
        "status": st.fixed_dictionaries(
            {
                "classify": st.sampled_from(["pending", "done", "error"]),
                "video": st.sampled_from(["pending", "done", "error"]),
            }
        ),
        "parentId": text,
        "cameraId": text,
        "analyse_id": st.integers(0, 2**63 - 1),
        "tenant": text,
        "duration": st.integers(0, 2**62),
        "duration_seconds": st.integers(0, 2**40),
        "model": text,
        "version": text,
        "error_code": st.integers(0, 599),
        "error_msg": text,
        "risk": st.sampled_from(["", "safe", "danger", "intrusion"]),
        "labels": st.lists(text, max_size=5),
        "scores": st.dictionaries(text, st.floats(0, 1), max_size=13),
        "video": st.fixed_dictionaries(
            {"videoname": text, "filesize": st.integers(0, 2**40), "specs": st.none() | specs}
        ),
        "timing": st.dictionaries(text, finite, max_size=5),
        "metadata": st.dictionaries(text, text | st.integers(-(2**63), 2**63 - 1), max_size=5),
        "created_at": text,
        "started_at": text,
    }
)


@settings(max_examples=150, deadline=None)
@given(results)
def test_any_result_survives_avro_and_rendering(doc):
    codec = default_codec()
    rendered = render_result(codec.parse(codec.serialize(RESULT, result_from_json(doc)), expect=RESULT))
    assert rendered == doc
    assert list(rendered) == list(EXAMPLE)
