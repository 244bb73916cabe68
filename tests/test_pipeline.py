"""Pipeline steps without Kafka: message bytes in, messages out (real clips, real decoder)."""

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, default_codec
from streams.errors import ErrorCode
from streams.pipeline import ClassifyStep, DecodeStep, Expiry, Origin, ResultsStep, should_store
from streams.results import base_result
from streams.settings import PROJECT_ROOT, Settings
from streams.stages.decode import decode
from streams.stages.models import ModelPack
from streams.stages.policy import PolicyBook
from streams.stages.pool import DecodePool, decode_to_jpeg
from streams.stages.uploads import UploadStore
from tests.kafka_io import clip_request

CLIPS = Path(__file__).parent / "fixtures" / "clips"
codec = default_codec()
ORIGIN = Origin("clipguard.requests", 2, 41, b"k")


@pytest.fixture
def settings(tmp_path):
    media = tmp_path / "media"
    (media / "uploads").mkdir(parents=True)
    shutil.copy(CLIPS / "people_h264.mp4", media / "people.mp4")
    shutil.copy(CLIPS / "people_h264.mov", media / "uploads" / "abc.mov")
    (media / "junk.mp4").write_bytes(b"\x00junk" * 1000)
    return Settings(media_roots=(media,), upload_dir=media / "uploads")


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
    outs = by_topic(await step(codec.serialize(REQUEST, request), ORIGIN))
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
    outs = by_topic(await step(codec.serialize(REQUEST, request), ORIGIN))
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
    outs = by_topic(await step(value, ORIGIN))
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


def test_results_are_forgotten_after_the_retention_partition_by_partition():
    expiry = Expiry(retention_s=100)
    assert expiry.note(0, b"a", now=0) == []
    assert expiry.note(1, b"b", now=50) == []
    assert expiry.note(0, b"c", now=90) == []
    assert expiry.note(0, b"d", now=101) == [b"a"]  # b is on another partition
    assert expiry.note(1, b"e", now=151) == [b"b"]
    assert expiry.note(0, b"f", now=500) == [b"c", b"d"]


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
        outs = by_topic(await step(codec.serialize(REQUEST, request), ORIGIN))
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
            Expiry(retention_s),
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
