"""Pipeline steps without Kafka: message bytes in, messages out (real clips, real decoder)."""

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, default_codec
from streams.errors import ErrorCode
from streams.ledger import Ledger
from streams.pipeline import (
    ClassifyStep,
    DecodeStep,
    Origin,
    Out,
    ResultsStep,
    should_store,
    undeliverable,
)
from streams.results import base_result, render_result, result_from_json
from streams.settings import PROJECT_ROOT, Settings
from streams.stages.decode import decode
from streams.stages.models import ModelPack
from streams.stages.policy import LABELS, PolicyBook
from streams.stages.pool import DecodePool, decode_to_jpeg
from streams.stages.uploads import UploadStore
from streams.topics import Topic
from tests.kafka_io import clip_request

CLIPS = Path(__file__).parent / "fixtures" / "clips"
codec = default_codec()
ORIGIN = Origin("clipguard.requests", 2, 41, b"k")


def origin(request):
    """Where a clip request was read: keyed by its id, as a VMS must produce it."""
    return Origin("clipguard.requests", 2, 41, request["id"].encode())


@pytest.fixture
def settings(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (tmp_path / "uploads" / "acme").mkdir(parents=True)
    shutil.copy(CLIPS / "people_h264.mp4", media / "people.mp4")
    shutil.copy(CLIPS / "people_h264.mov", tmp_path / "uploads" / "acme" / "abc.mov")
    (media / "junk.mp4").write_bytes(b"\x00junk" * 1000)
    return Settings(media_roots=(media,), upload_dir=tmp_path / "uploads")


@pytest.fixture(params=["jpeg in the child", "pixels from the child"])
async def step(settings, request):
    # The worker's pool encodes in the child; a plain pool's pixels are encoded by the step.
    decode_fn = decode_to_jpeg if request.param == "jpeg in the child" else decode
    pool = DecodePool(settings, decode_fn=decode_fn)
    yield DecodeStep(settings, codec, pool, UploadStore(settings.upload_dir))
    pool.close()


def by_topic(outs):
    return {out.topic: out for out in outs}


async def test_a_good_clip_becomes_a_decoded_clip_and_progress(step, settings):
    request = clip_request((settings.media_roots[0] / "people.mp4").as_uri())
    outs = by_topic(await step(codec.serialize(REQUEST, request), origin(request)))
    assert set(outs) == {"decoded", "progress"}
    decoded = codec.parse(outs["decoded"].value, expect=DECODED)
    assert outs["decoded"].key == request["id"].encode()
    assert decoded["request"] == request
    assert decoded["specs"]["width"] == 568 and decoded["specs"]["height"] == 320
    assert len(decoded["frames"]) == decoded["specs"]["nframes"] == len(decoded["timestamps"])
    assert all(frame[:2] == b"\xff\xd8" for frame in decoded["frames"])  # JPEG
    assert {"fetch", "decode", "encode"} <= set(decoded["timing"])
    assert len(outs["decoded"].value) < 1_000_000
    progress = codec.parse(outs["progress"].value, expect=RESULT)
    assert progress["status"] == {"classify": "pending", "video": "done"}


async def test_an_upload_reference_reads_from_the_upload_store(step):
    request = clip_request("upload://abc.mov")
    outs = by_topic(await step(codec.serialize(REQUEST, request), origin(request)))
    assert codec.parse(outs["decoded"].value, expect=DECODED)["videoname"] == "abc.mov"


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("junk.mp4", ErrorCode.INVALID_VIDEO),
        ("missing.mp4", ErrorCode.SOURCE_NOT_FOUND),
        ("file:///etc/hostname", ErrorCode.SOURCE_FORBIDDEN),
        ("upload://../people.mp4", ErrorCode.SOURCE_FORBIDDEN),
        ("gopher://example.org/x", ErrorCode.SOURCE_FORBIDDEN),
    ],
)
async def test_a_bad_clip_becomes_an_error_result_and_a_dead_letter(step, settings, uri, code):
    if "://" not in uri:
        uri = (settings.media_roots[0] / uri).as_uri()
    request = clip_request(uri)
    value = codec.serialize(REQUEST, request)
    outs = by_topic(await step(value, origin(request)))
    assert set(outs) == {"results", "deadletter"}
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["error_code"] == code
    assert request["id"] in result["error_msg"]
    assert result["status"] == {"classify": "error", "video": "error"}
    letter = codec.parse(outs["deadletter"].value, expect=DEAD_LETTER)
    assert letter["value"] == value and letter["clip_id"] == request["id"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("clipguard.requests", 2, 41)


async def test_a_message_that_is_not_ours_goes_to_dead_letters_untouched(step):
    outs = await step(b"\x00\x01 definitely not avro", ORIGIN)
    assert [out.topic for out in outs] == ["deadletter"]
    letter = codec.parse(outs[0].value, expect=DEAD_LETTER)
    assert letter["value"] == b"\x00\x01 definitely not avro"
    assert letter["error_code"] == ErrorCode.MALFORMED_MESSAGE
    assert "marker" in letter["error_msg"]


def test_a_final_result_is_never_replaced_by_progress():
    request = clip_request("file:///x.mp4")
    pending = base_result(request, started_at="")
    done = {**pending, "status": {"classify": "done", "video": "done"}}
    assert should_store(None, pending)
    assert should_store(pending, done)
    assert not should_store(done, pending)
    assert should_store(done, done)  # a replayed duplicate is harmless


def test_an_error_never_replaces_a_success_but_a_retry_can_fix_an_error():
    request = clip_request("file:///x.mp4")
    pending = base_result(request, started_at="")
    done = {**pending, "status": {"classify": "done", "video": "done"}}
    failed = {**pending, "status": {"classify": "error", "video": "error"}, "error_code": 101}
    assert not should_store(done, failed)
    assert should_store(failed, done)
    assert not should_store(failed, pending)


# --- ClassifyStep: decoded -> results ---------------------------------------------------


@pytest.fixture(scope="module")
def pack():
    return ModelPack.load(PROJECT_ROOT / "models", threads=1)


@pytest.fixture
async def decoded_value(settings):
    """A real decoded-clip message, made by the decode step from a real clip."""
    pool = DecodePool(settings, decode_fn=decode_to_jpeg)
    try:
        step = DecodeStep(settings, codec, pool, UploadStore(settings.upload_dir))
        request = clip_request((settings.media_roots[0] / "people.mp4").as_uri())
        outs = by_topic(await step(codec.serialize(REQUEST, request), origin(request)))
    finally:
        pool.close()
    return outs["decoded"].value


@pytest.fixture
def classify_step(pack):
    executor = ThreadPoolExecutor(max_workers=1)
    yield lambda pack_=pack: ClassifyStep(codec, pack_, PolicyBook(), executor)
    executor.shutdown()


async def test_a_decoded_clip_becomes_a_final_result_with_people_found(
    classify_step, decoded_value
):
    outs = await classify_step()(decoded_value, ORIGIN)
    assert [out.topic for out in outs] == ["results"]
    result = codec.parse(outs[0].value, expect=RESULT)
    decoded = codec.parse(decoded_value, expect=DECODED)
    assert outs[0].key == decoded["request"]["id"].encode()
    assert result["status"] == {"classify": "done", "video": "done"}
    assert result["risk"] == "intrusion" and "person" in result["labels"]
    assert len(result["scores"]) == 13
    assert result["video"]["specs"] == decoded["specs"]
    assert {"fetch", "decode", "encode", "classify", "total"} <= set(result["timing"])


class BrokenPack:
    name, version = "broken", "0"

    def analyse(self, frames):
        raise RuntimeError("onnxruntime fell over")


async def test_an_inference_failure_becomes_an_error_result_and_a_dead_letter(
    classify_step, decoded_value
):
    outs = by_topic(await classify_step(BrokenPack())(decoded_value, ORIGIN))
    assert set(outs) == {"results", "deadletter"}
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["error_code"] == ErrorCode.INFERENCE_FAILED
    assert result["status"] == {"classify": "error", "video": "done"}
    assert "onnxruntime fell over" in result["error_msg"]
    letter = codec.parse(outs["deadletter"].value, expect=DEAD_LETTER)
    assert letter["value"] == decoded_value and letter["stage"] == "classify"


async def test_damaged_frames_become_an_error_result_not_a_crash(classify_step, decoded_value):
    decoded = codec.parse(decoded_value, expect=DECODED)
    decoded["frames"][1] = decoded["frames"][1][:40]
    outs = by_topic(await classify_step()(codec.serialize(DECODED, decoded), ORIGIN))
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["error_code"] == ErrorCode.MALFORMED_MESSAGE
    assert "frame 1" in result["error_msg"]


async def test_a_request_on_the_decoded_topic_is_a_dead_letter(classify_step):
    value = codec.serialize(REQUEST, clip_request("file:///x.mp4"))
    outs = await classify_step()(value, ORIGIN)
    assert [out.topic for out in outs] == ["deadletter"]
    assert codec.parse(outs[0].value, expect=DEAD_LETTER)["stage"] == "classify"


# --- ResultsStep: results + progress -> the result table ---------------------------------


class Results:
    """A ResultsStep over a plain dict, with a clock the test moves and the waiters it woke."""

    def __init__(self, retention_s=1000.0):
        self.table, self.woken, self.now = {}, [], 0.0
        self.step = ResultsStep(
            codec,
            self.table,
            Ledger(deadline_s=60.0, retention_s=retention_s),
            on_final=lambda key, value: self.woken.append(key),
            clock=lambda: self.now,
        )

    async def receive(self, result, partition=0):
        origin = Origin("clipguard.results", partition, 0, result["id"].encode())
        return await self.step(codec.serialize(RESULT, result), origin)

    def stored(self, clip_id):
        return codec.parse(self.table[clip_id.encode()], expect=RESULT)


def states(request):
    pending = base_result(request, started_at="")
    done = {**pending, "status": {"classify": "done", "video": "done"}, "risk": "safe"}
    failed = {**pending, "status": {"classify": "error", "video": "error"}, "error_code": 101}
    return pending, done, failed


async def test_the_table_keeps_the_final_result_and_waiters_hear_of_it_once_final():
    results = Results()
    request = clip_request("file:///x.mp4")
    pending, done, _ = states(request)
    assert await results.receive(pending) == []
    assert results.stored(request["id"])["status"]["classify"] == "pending"
    assert results.woken == []
    await results.receive(done)
    await results.receive(pending)  # a late progress message
    assert results.stored(request["id"]) == done
    assert results.woken == [request["id"].encode()]


async def test_an_error_arriving_after_a_success_leaves_the_success_served():
    results = Results()
    request = clip_request("file:///x.mp4")
    _, done, failed = states(request)
    await results.receive(done)
    await results.receive(failed)
    assert results.stored(request["id"]) == done


async def test_results_past_the_retention_leave_the_table():
    results = Results(retention_s=100)
    old, new = clip_request("file:///a.mp4"), clip_request("file:///b.mp4")
    await results.receive(states(old)[1])
    results.now = 150.0
    await results.receive(states(new)[1])
    assert old["id"].encode() not in results.table
    assert results.stored(new["id"])["id"] == new["id"]


async def test_an_unreadable_result_message_is_a_dead_letter_and_the_table_is_untouched():
    results = Results()
    outs = await results.step(b"garbage", Origin("clipguard.progress", 1, 9, b"k"))
    assert [out.topic for out in outs] == ["deadletter"]
    letter = codec.parse(outs[0].value, expect=DEAD_LETTER)
    assert (letter["stage"], letter["topic"], letter["offset"]) == (
        "results",
        "clipguard.progress",
        9,
    )
    assert results.table == {}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": "not-an-id"}, "24 lowercase hex"),
        ({"id": "A" * 24}, "24 lowercase hex"),
        ({"tenant": "../acme"}, "not a valid tenant"),
        ({"tenant": ""}, "not a valid tenant"),
    ],
)
async def test_a_request_with_an_id_or_tenant_we_would_never_make_is_a_dead_letter(
    step, changes, reason
):
    request = clip_request("upload://abc.mov", **changes)
    value = codec.serialize(REQUEST, request)
    outs = await step(value, origin(request))
    assert [out.topic for out in outs] == ["deadletter"]
    letter = codec.parse(outs[0].value, expect=DEAD_LETTER)
    assert letter["value"] == value and reason in letter["error_msg"]


async def test_a_request_keyed_by_something_else_than_its_id_is_a_dead_letter(step):
    request = clip_request("upload://abc.mov")
    outs = await step(codec.serialize(REQUEST, request), ORIGIN)
    assert [out.topic for out in outs] == ["deadletter"]
    assert "message key" in codec.parse(outs[0].value, expect=DEAD_LETTER)["error_msg"]


async def test_an_unexpected_failure_while_decoding_still_answers_the_clip(step, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(step.pool, "decode", broken)
    request = clip_request("upload://abc.mov")
    outs = by_topic(await step(codec.serialize(REQUEST, request), origin(request)))
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["error_code"] == ErrorCode.INTERNAL and "a bug" not in result["error_msg"]
    assert codec.parse(outs["deadletter"].value, expect=DEAD_LETTER)["stage"] == "decode"


async def test_a_result_for_another_tenants_id_never_replaces_it():
    results = Results()
    request = clip_request("file:///x.mp4", tenant="acme")
    _, done, _ = states(request)
    await results.receive(done)
    impostor = {**done, "tenant": "globex", "labels": ["person"], "risk": "intrusion"}
    outs = await results.receive(impostor)
    assert results.stored(request["id"]) == done
    letter = codec.parse(outs[0].value, expect=DEAD_LETTER)
    assert letter["error_code"] == ErrorCode.ID_CONFLICT
    assert results.woken == [request["id"].encode()]  # only the real result woke anyone


def test_an_output_kafka_refuses_for_good_becomes_an_error_result_and_a_dead_letter():
    request = clip_request("upload://abc.mov")
    decoded_value = codec.serialize(
        DECODED,
        {
            "request": request,
            "started_at": "",
            "videoname": "abc.mov",
            "filesize": 10,
            "specs": {
                "width": 4, "height": 2, "fps": 1.0, "nframes": 1, "duration": 1.0,
                "original_width": 4, "original_height": 2, "original_fps": 1.0,
                "original_nframes": 1,
            },
            "frames": [b"x"],
            "timestamps": [0.0],
            "timing": {},
        },
    )  # fmt: skip
    value = codec.serialize(REQUEST, request)
    failed = Out(Topic.DECODED, request["id"].encode(), decoded_value)
    outs = by_topic(undeliverable(codec, origin(request), value, failed, "MessageSizeTooLarge"))
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["id"] == request["id"] and result["tenant"] == request["tenant"]
    assert result["error_code"] == ErrorCode.UNDELIVERABLE
    letter = codec.parse(outs["deadletter"].value, expect=DEAD_LETTER)
    assert letter["value"] == value and letter["stage"] == "deliver"


# --- Error and pending results carry every published value (risk danger, 13 scores, specs) ---

PUBLISHED_KEYS = [
    "id", "status", "parentId", "cameraId", "analyse_id", "tenant", "duration",
    "duration_seconds", "model", "version", "error_code", "error_msg", "risk", "labels",
    "scores", "video", "timing", "metadata", "created_at", "started_at",
]  # fmt: skip
SPEC_FIELDS = {
    "width", "height", "fps", "nframes", "duration",
    "original_width", "original_height", "original_fps", "original_nframes",
}  # fmt: skip


def assert_not_classified(result, specs=None):
    """A result a router can act on though the clip was not classified: danger, all values."""
    assert result["risk"] == "danger" and result["labels"] == []
    assert list(result["scores"]) == list(LABELS)
    assert all(score == 0.0 for score in result["scores"].values())
    assert result["video"]["specs"] is not None
    assert set(result["video"]["specs"]) == SPEC_FIELDS
    if specs is None:
        assert all(value == 0 for value in result["video"]["specs"].values())
    else:
        assert result["video"]["specs"] == specs
    rendered = render_result(result)
    assert list(rendered) == PUBLISHED_KEYS
    assert len(rendered["video"]["specs"]) == 9 and len(rendered["scores"]) == 13
    assert result_from_json(rendered) == result


@pytest.mark.parametrize("name", ["junk.mp4", "missing.mp4"])
async def test_a_clip_that_fails_before_classify_is_danger_with_every_value(step, settings, name):
    request = clip_request((settings.media_roots[0] / name).as_uri())
    outs = by_topic(await step(codec.serialize(REQUEST, request), origin(request)))
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["status"] == {"classify": "error", "video": "error"}
    assert result["error_code"] != 0 and result["error_msg"]
    assert_not_classified(result)


async def test_progress_is_danger_with_13_zero_scores_and_the_decoded_specs(step, settings):
    request = clip_request((settings.media_roots[0] / "people.mp4").as_uri())
    outs = by_topic(await step(codec.serialize(REQUEST, request), origin(request)))
    progress = codec.parse(outs["progress"].value, expect=RESULT)
    decoded = codec.parse(outs["decoded"].value, expect=DECODED)
    assert progress["status"] == {"classify": "pending", "video": "done"}
    assert_not_classified(progress, specs=decoded["specs"])


async def test_a_classify_failure_is_danger_and_keeps_the_decoded_video(
    classify_step, decoded_value
):
    outs = by_topic(await classify_step(BrokenPack())(decoded_value, ORIGIN))
    result = codec.parse(outs["results"].value, expect=RESULT)
    decoded = codec.parse(decoded_value, expect=DECODED)
    assert result["status"] == {"classify": "error", "video": "done"}
    assert_not_classified(result, specs=decoded["specs"])
    assert result["video"]["videoname"] == decoded["videoname"]
    assert result["video"]["filesize"] == decoded["filesize"]


def test_an_undeliverable_clip_is_danger_with_every_value():
    request = clip_request("upload://abc.mov")
    progress = base_result(request, started_at="")
    failed = Out(Topic.PROGRESS, request["id"].encode(), codec.serialize(RESULT, progress))
    value = codec.serialize(REQUEST, request)
    outs = by_topic(undeliverable(codec, origin(request), value, failed, "MessageSizeTooLarge"))
    result = codec.parse(outs["results"].value, expect=RESULT)
    assert result["error_code"] == ErrorCode.UNDELIVERABLE
    assert_not_classified(result)
