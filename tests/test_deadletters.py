"""Dead letters without Kafka: their record headers on every error path, what a replay takes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streams.cli import main
from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, default_codec
from streams.deadletters import (
    DEADLINE_SKIP,
    DECODED_SKIP,
    NO_KEY_SKIP,
    RESULT_SKIP,
    Letter,
    ReplayReport,
    Selection,
    letter_of,
    replay,
    skip_reason,
    table,
)
from streams.errors import ConfigError, ErrorCode
from streams.ledger import Ledger, deadline_outputs
from streams.pipeline import (
    ClassifyStep,
    DecodeStep,
    Origin,
    Out,
    ResultsStep,
    dead_letter,
    undeliverable,
)
from streams.records import DeadLetter
from streams.results import base_result
from streams.settings import Settings
from streams.stages.frames import to_jpeg
from streams.stages.policy import PolicyBook
from streams.stages.uploads import UploadStore
from streams.topics import Topic, intake_topics
from tests.kafka_io import clip_request

codec = default_codec()
CONNECT_HEADERS = [
    "__connect.errors.topic",
    "__connect.errors.partition",
    "__connect.errors.offset",
    "__connect.errors.stage",
    "__connect.errors.exception.message",
]


def expected_headers(record: DeadLetter) -> list[tuple[str, bytes]]:
    """What the headers must say: the Avro record's own values, as UTF-8 text."""
    headers = [
        ("__connect.errors.topic", record["topic"].encode()),
        ("__connect.errors.partition", str(record["partition"]).encode()),
        ("__connect.errors.offset", str(record["offset"]).encode()),
        ("__connect.errors.stage", record["stage"].encode()),
        ("__connect.errors.exception.message", record["error_msg"].encode()),
        ("clipguard.error_code", str(record["error_code"]).encode()),
    ]
    if record["clip_id"] is not None:
        headers.append(("clipguard.clip_id", record["clip_id"].encode()))
    return headers


def the_letter(outs: list[Out]) -> tuple[Out, DeadLetter]:
    (out,) = [out for out in outs if out.topic is Topic.DEADLETTER]
    assert all(other.headers == () for other in outs if other is not out)
    return out, codec.parse(out.value, expect=DEAD_LETTER)


def assert_headers(out: Out, *, stage: str, code: ErrorCode, clip_id: str | None) -> None:
    record = codec.parse(out.value, expect=DEAD_LETTER)
    assert (record["stage"], record["error_code"], record["clip_id"]) == (stage, code, clip_id)
    assert list(out.headers) == expected_headers(record)
    names = [name for name, _ in out.headers]
    assert names[:5] == CONNECT_HEADERS
    assert ("clipguard.clip_id" in names) == (clip_id is not None)
    assert all(isinstance(value, bytes) for _, value in out.headers)


@pytest.fixture
def settings(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(b"not looked at")
    return Settings(media_roots=(media,), upload_dir=tmp_path / "uploads")


class BrokenPool:
    async def decode(self, *args, **kwargs):
        raise RuntimeError("a bug")


@pytest.fixture
def decode_step(settings):
    return DecodeStep(settings, codec, BrokenPool(), UploadStore(settings.upload_dir))


def at(request, topic="clipguard.requests"):
    return Origin(topic, 3, 77, request["id"].encode())


# --- the headers of a dead letter, on every path that writes one ------------------------------


async def test_a_message_that_is_not_ours_at_intake(decode_step):
    outs = await decode_step(b"\x00 not avro", Origin("clipguard.requests", 2, 41, b"k"))
    out, _ = the_letter(outs)
    assert_headers(out, stage="intake", code=ErrorCode.MALFORMED_MESSAGE, clip_id="k")
    assert dict(out.headers)["__connect.errors.offset"] == b"41"
    assert dict(out.headers)["__connect.errors.topic"] == b"clipguard.requests"


async def test_a_request_keyed_by_something_else_at_intake(decode_step):
    request = clip_request("upload://abc.mov")
    outs = await decode_step(codec.serialize(REQUEST, request), Origin("t.requests", 0, 5, b"x"))
    out, _ = the_letter(outs)
    assert_headers(out, stage="intake", code=ErrorCode.MALFORMED_MESSAGE, clip_id="x")
    assert b"message key" in dict(out.headers)["__connect.errors.exception.message"]


async def test_a_clip_that_cannot_be_fetched_at_decode(decode_step):
    request = clip_request("gopher://example.org/x")
    outs = await decode_step(codec.serialize(REQUEST, request), at(request))
    out, _ = the_letter(outs)
    assert_headers(out, stage="decode", code=ErrorCode.SOURCE_FORBIDDEN, clip_id=request["id"])
    assert dict(out.headers)["clipguard.error_code"] == b"102"


async def test_a_bug_while_decoding_at_decode(decode_step, settings):
    request = clip_request((settings.media_roots[0] / "clip.mp4").as_uri())
    outs = await decode_step(codec.serialize(REQUEST, request), at(request))
    out, _ = the_letter(outs)
    assert_headers(out, stage="decode", code=ErrorCode.INTERNAL, clip_id=request["id"])


class BrokenPack:
    name, version = "broken", "0"

    def analyse(self, frames):
        raise RuntimeError("onnxruntime fell over")


def decoded_value(request) -> bytes:
    frames = to_jpeg([np.zeros((16, 16, 3), dtype=np.uint8)] * 2, 85)
    specs = dict.fromkeys(("width", "height", "original_width", "original_height"), 16)
    specs |= {"nframes": 2, "original_nframes": 2, "fps": 1.0, "duration": 2.0}
    specs["original_fps"] = 1.0
    return codec.serialize(
        DECODED,
        {
            "request": request,
            "started_at": "",
            "videoname": "clip.mp4",
            "filesize": 10,
            "specs": specs,
            "frames": frames,
            "timestamps": [0.0, 1.0],
            "timing": {},
        },
    )


@pytest.mark.parametrize(
    ("value", "code"),
    [(b"garbage", ErrorCode.MALFORMED_MESSAGE), (None, ErrorCode.INFERENCE_FAILED)],
    ids=["unreadable", "inference failed"],
)
async def test_a_decoded_clip_that_cannot_be_classified_at_classify(value, code):
    request = clip_request("upload://abc.mov")
    with ThreadPoolExecutor(max_workers=1) as executor:
        step = ClassifyStep(codec, BrokenPack(), PolicyBook(), executor)
        origin = at(request, "clipguard.decoded")
        outs = await step(value or decoded_value(request), origin)
    out, _ = the_letter(outs)
    clip_id = request["id"] if value is None else origin.key.decode()
    assert_headers(out, stage="classify", code=code, clip_id=clip_id)
    assert dict(out.headers)["__connect.errors.topic"] == b"clipguard.decoded"


def results_step():
    return ResultsStep(codec, {}, Ledger(60.0, 1000.0), on_final=lambda key, value: None)


async def test_a_keyless_result_at_results_has_no_clip_id_header():
    outs = await results_step()(b"garbage", Origin("clipguard.progress", 1, 9, None))
    out, _ = the_letter(outs)
    assert_headers(out, stage="results", code=ErrorCode.MALFORMED_MESSAGE, clip_id=None)


async def test_a_result_for_another_tenants_id_at_results():
    step = results_step()
    request = clip_request("file:///x.mp4", tenant="acme")
    done = {**base_result(request, started_at=""), "status": {"classify": "done", "video": "done"}}
    origin = at(request, "clipguard.results")
    assert await step(codec.serialize(RESULT, done), origin) == []
    outs = await step(codec.serialize(RESULT, {**done, "tenant": "globex"}), origin)
    out, _ = the_letter(outs)
    assert_headers(out, stage="results", code=ErrorCode.ID_CONFLICT, clip_id=request["id"])


def test_a_clip_past_its_deadline_at_deadline():
    request = clip_request("upload://abc.mov")
    pending = codec.serialize(RESULT, base_result(request, started_at=""))
    key = request["id"].encode()
    outs = deadline_outputs(codec, "clipguard-results-changelog", 2, key, pending, 60.0)
    out, record = the_letter(outs)
    assert_headers(out, stage="deadline", code=ErrorCode.DEADLINE_EXCEEDED, clip_id=request["id"])
    assert dict(out.headers)["__connect.errors.offset"] == b"-1"
    assert skip_reason(Settings(), record) == DEADLINE_SKIP


def test_an_output_kafka_refuses_at_deliver():
    request = clip_request("upload://abc.mov")
    value = codec.serialize(REQUEST, request)
    failed = Out(Topic.DECODED, request["id"].encode(), decoded_value(request))
    outs = undeliverable(codec, at(request), value, failed, "MessageSizeTooLargeError")
    out, record = the_letter(outs)
    assert_headers(out, stage="deliver", code=ErrorCode.UNDELIVERABLE, clip_id=request["id"])
    assert record["value"] == value


def test_a_refused_dead_letter_at_deliver_keeps_no_clip_id():
    request = clip_request("upload://abc.mov")
    value = codec.serialize(REQUEST, request)
    failed = Out(Topic.DEADLETTER, b"k", b"whatever")
    (out,) = undeliverable(codec, at(request), value, failed, "TopicAuthorizationFailedError")
    assert_headers(out, stage="deliver", code=ErrorCode.UNDELIVERABLE, clip_id=None)


def test_an_unexpected_exception_in_a_step_at_internal():
    # What streams/app.py's agent loop writes when a step raises (a bug of ours).
    out = dead_letter(
        codec,
        Origin("clipguard.results", 0, 12, b"k"),
        b"v",
        stage="internal",
        code=ErrorCode.INTERNAL,
        message="internal error; see logs",
        clip_id=None,
    )
    assert_headers(out, stage="internal", code=ErrorCode.INTERNAL, clip_id=None)


def test_a_key_that_is_not_utf8_still_gives_text_headers():
    out = dead_letter(
        codec,
        Origin("clipguard.requests", 0, 1, b"\xff\xfe"),
        b"\xff",
        stage="intake",
        code=ErrorCode.MALFORMED_MESSAGE,
        message="unknown marker fffe",
        clip_id=b"\xff\xfe".decode(errors="replace"),
    )
    dict(out.headers)["clipguard.clip_id"].decode("utf-8")  # valid UTF-8


def test_outputs_that_are_not_dead_letters_have_no_headers():
    assert Out(Topic.RESULTS, b"k", b"v").headers == ()


# --- what a replay takes, and where it puts it ------------------------------------------------


def record(**changes) -> DeadLetter:
    request = clip_request("upload://abc.mov")
    letter: DeadLetter = {
        "clip_id": request["id"],
        "topic": "clipguard.requests",
        "partition": 2,
        "offset": 41,
        "key": request["id"].encode(),
        "value": codec.serialize(REQUEST, request),
        "stage": "decode",
        "error_code": int(ErrorCode.FETCH_FAILED),
        "error_msg": f"clip {request['id']}: the download failed (HTTP 503)",
        "failed_at": "2026-03-01T10:00:00.000+01:00",
    }
    letter.update(changes)  # type: ignore[typeddict-item]
    return letter


def test_a_selection_takes_what_every_given_criterion_says():
    letter = record()
    assert Selection().matches(letter) and Selection().everything
    assert Selection(stage="decode", code=103).matches(letter)
    assert not Selection(stage="intake").matches(letter)
    assert not Selection(code=101).matches(letter)
    assert Selection(ids=frozenset({letter["clip_id"]})).matches(letter)
    assert not Selection(ids=frozenset({"0" * 24})).matches(letter)
    failed = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)  # 10:00 at +01:00
    assert Selection(since=failed, until=failed + timedelta(seconds=1)).matches(letter)
    assert not Selection(since=failed + timedelta(milliseconds=1)).matches(letter)
    assert not Selection(until=failed).matches(letter)  # until is exclusive
    assert Selection(since=datetime(2026, 3, 1, 9, 0)).matches(letter)  # naive is UTC
    assert not Selection(since=failed).matches(record(failed_at="yesterday"))


def test_only_clip_requests_are_replayed_and_each_skip_says_why():
    settings = Settings(kafka_tenants=("acme",))
    (intake,) = intake_topics(settings)
    assert skip_reason(settings, record()) is None
    assert skip_reason(settings, record(topic=intake)) is None
    assert skip_reason(settings, record(topic="clipguard.decoded")) == DECODED_SKIP
    assert "intake checks" in DECODED_SKIP
    assert skip_reason(settings, record(topic="clipguard.results")) == RESULT_SKIP
    assert skip_reason(settings, record(topic="clipguard.progress")) == RESULT_SKIP
    assert skip_reason(settings, record(key=None)) == NO_KEY_SKIP
    other = skip_reason(settings, record(topic="clipguard.intake.globex"))
    assert other is not None and "CLIPGUARD_KAFKA_TENANTS" in other


def test_the_list_is_a_table_with_the_message_cut_short():
    long = record(error_msg="x" * 500 + "\n")
    letters = [letter_of(Settings(), 0, 5, record()), letter_of(Settings(), 1, 6, long)]
    header, first, second = table(letters)
    assert header.split("\t") == ["failed_at", "stage", "code", "clip_id", "origin", "message"]
    assert first.split("\t")[:5] == [
        "2026-03-01T10:00:00.000+01:00",
        "decode",
        "103",
        letters[0].clip_id,
        "clipguard.requests[2]@41",
    ]
    assert len(second.split("\t")[5]) == 80 and second.endswith("...")


def test_the_report_counts_and_groups_the_skipped_by_reason():
    settings = Settings()
    letters: list[Letter] = [
        letter_of(settings, 0, 0, record()),
        letter_of(settings, 0, 1, record(topic="clipguard.decoded")),
        letter_of(settings, 1, 0, record(topic="clipguard.decoded")),
    ]
    report = ReplayReport("clipguard.deadletter", True, letters, letters[:1], unreadable=1)
    assert report.replayed_ids == [letters[0].clip_id]
    assert list(report.skipped) == [DECODED_SKIP] and len(report.skipped[DECODED_SKIP]) == 2
    lines = report.lines()
    assert lines[0].startswith(f"would replay {letters[0].clip_id} clipguard.requests[2]@41")
    assert lines[1].startswith("skipped ")
    assert lines[-2] == (
        "clipguard.deadletter: 3 matched, 1 would replay, 2 skipped, "
        "1 unreadable records passed over"
    )
    assert lines[-1] == f"  2 skipped: {DECODED_SKIP}"


# --- the command refuses before it connects ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["deadletter", "replay"], "--all"),
        (["deadletter", "replay", "--limit", "5"], "--all"),
        (["deadletter", "list", "--since", "last tuesday"], "ISO 8601"),
        (["deadletter", "list", "--limit", "0"], "at least 1"),
        (["deadletter", "replay", "--stage", "decoding"], "invalid choice"),
    ],
)
def test_the_command_refuses_what_it_cannot_do_safely(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


async def test_a_limit_below_one_is_refused():
    with pytest.raises(ConfigError):
        await replay(Settings(), stage="decode", limit=0)
