"""The published result JSON: the documentation's example survives Avro and rendering."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import RESULT, default_codec
from streams.errors import ErrorCode
from streams.results import (
    UNVERIFIED_RISK,
    base_result,
    error_result,
    iso_timestamp,
    new_clip_id,
    render_result,
    result_from_json,
)
from streams.stages.policy import LABELS, RISKS
from tests.kafka_io import clip_request

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
        "risk": st.sampled_from(RISKS),
        "labels": st.lists(text, max_size=5),
        # All 13 labels, in any order (the published example's is not LABELS' order).
        "scores": st.permutations(LABELS).flatmap(
            lambda order: st.fixed_dictionaries({label: st.floats(0, 1) for label in order})
        ),
        "video": st.fixed_dictionaries(
            {"videoname": text, "filesize": st.integers(0, 2**40), "specs": specs}
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
    rendered = render_result(
        codec.parse(codec.serialize(RESULT, result_from_json(doc)), expect=RESULT)
    )
    assert rendered == doc
    assert list(rendered) == list(EXAMPLE)


# --- Results a router can act on: error and pending results carry every published value ---

SPEC_KEYS = list(EXAMPLE["video"]["specs"])
ZERO_SPECS = dict.fromkeys(SPEC_KEYS, 0)
DECODED_VIDEO = {
    "videoname": "cam1.mp4",
    "filesize": 786800,
    "specs": {
        "width": 568, "height": 320, "fps": 3.08, "nframes": 13, "duration": 4.217772,
        "original_width": 640, "original_height": 360, "original_fps": 3.0,
        "original_nframes": 12,
    },
}  # fmt: skip


def assert_published_and_fail_safe(record, specs=ZERO_SPECS):
    """What a router can rely on in a result that is not `done`, in Avro and in JSON."""
    assert UNVERIFIED_RISK == "danger" and UNVERIFIED_RISK in RISKS
    assert record["risk"] == "danger" and record["labels"] == []
    assert list(record["scores"]) == list(LABELS)
    assert set(record["scores"].values()) == {0.0}
    assert record["video"]["specs"] is not None
    codec = default_codec()
    parsed = codec.parse(codec.serialize(RESULT, record), expect=RESULT)
    assert parsed == record
    rendered = render_result(parsed)
    assert list(rendered) == list(EXAMPLE)
    assert list(rendered["video"]) == list(EXAMPLE["video"])
    assert list(rendered["video"]["specs"]) == SPEC_KEYS
    assert rendered["video"]["specs"] == specs
    assert rendered["risk"] == "danger" and rendered["labels"] == []
    assert rendered["scores"] == dict.fromkeys(LABELS, 0.0)
    assert result_from_json(json.loads(json.dumps(rendered))) == record
    return rendered


def test_an_error_before_decode_is_danger_with_13_zero_scores_and_zero_specs():
    request = clip_request("file:///srv/media/cam1.mp4")
    record = error_result(
        request,
        ErrorCode.INVALID_VIDEO,
        "cam1.mp4: not a readable video file",
        started_at=iso_timestamp(),
        timing={"fetch": 1.5, "decode": 2.0},
    )
    assert record["status"] == {"classify": "error", "video": "error"}
    assert record["video"]["specs"] == {
        "width": 0, "height": 0, "fps": 0.0, "nframes": 0, "duration": 0.0,
        "original_width": 0, "original_height": 0, "original_fps": 0.0, "original_nframes": 0,
    }  # fmt: skip
    assert all(
        type(v) is float
        for k, v in record["video"]["specs"].items()
        if k.endswith(("fps", "duration"))
    )
    rendered = assert_published_and_fail_safe(record)
    assert (rendered["error_code"], rendered["error_msg"]) == (
        201,
        "cam1.mp4: not a readable video file",
    )
    assert rendered["timing"] == {"fetch": 1.5, "decode": 2.0, "total": 3.5}


def test_an_error_after_decode_keeps_the_decoded_video():
    request = clip_request("https://vms.example/cam1.mp4")
    record = error_result(
        request,
        ErrorCode.INFERENCE_FAILED,
        "model pack failed",
        started_at=iso_timestamp(),
        timing={},
        video_done=True,
        video=DECODED_VIDEO,
    )
    assert record["status"] == {"classify": "error", "video": "done"}
    assert record["video"] == DECODED_VIDEO
    rendered = assert_published_and_fail_safe(record, specs=EXAMPLE["video"]["specs"])
    assert rendered["video"]["filesize"] == 786800 and rendered["error_code"] == 301


def test_a_pending_result_is_danger_with_13_zero_scores_and_zero_specs_until_decoded():
    request = clip_request("upload://abc.mov")
    pending = base_result(request, started_at="")
    assert pending["status"] == {"classify": "pending", "video": "pending"}
    assert pending["error_code"] == 0 and pending["error_msg"] == ""
    assert_published_and_fail_safe(pending)
    decoded = {
        **pending,
        "status": {"classify": "pending", "video": "done"},
        "video": DECODED_VIDEO,
    }
    assert_published_and_fail_safe(decoded, specs=EXAMPLE["video"]["specs"])


def test_results_are_built_fresh_so_one_cannot_change_another():
    request = clip_request("upload://abc.mov")
    first, second = base_result(request, started_at=""), base_result(request, started_at="")
    first["scores"]["person"] = 0.9
    first["video"]["specs"]["width"] = 640
    assert second["scores"]["person"] == 0.0 and second["video"]["specs"]["width"] == 0


def test_a_record_from_before_the_rule_is_published_fail_safe():
    """The result table keeps records for the retention: risk "", scores {}, specs null."""
    request = clip_request("upload://abc.mov")
    old = error_result(request, ErrorCode.INVALID_VIDEO, "bad", started_at="", timing={})
    old.update(risk="", scores={})
    old["video"]["specs"] = None
    codec = default_codec()
    rendered = render_result(codec.parse(codec.serialize(RESULT, old), expect=RESULT))
    assert list(rendered) == list(EXAMPLE)
    assert rendered["risk"] == "danger"
    assert rendered["scores"] == dict.fromkeys(LABELS, 0.0)
    assert rendered["video"]["specs"] == ZERO_SPECS
    # An old JSON document with "specs": null still reads (replays).
    doc = {**rendered, "video": {**rendered["video"], "specs": None}}
    assert result_from_json(doc)["video"]["specs"] is None
