"""Pipeline steps without Kafka: message bytes in, messages out (real clips, real decoder)."""

import shutil
from pathlib import Path

import pytest

from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, default_codec
from streams.errors import ErrorCode
from streams.pipeline import DecodeStep, Expiry, Origin, should_store
from streams.results import base_result
from streams.settings import Settings
from streams.stages.decode import decode
from streams.stages.pool import DecodePool, decode_to_jpeg
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
    yield DecodeStep(settings, codec, pool)
    pool.close()


def by_topic(outs):
    return {out.topic: out for out in outs}


async def test_a_good_clip_becomes_a_decoded_clip_and_progress(step, settings):
    request = clip_request((settings.media_roots[0] / "people.mp4").as_uri())
    outs = by_topic(await step(codec.encode(REQUEST, request), ORIGIN))
    assert set(outs) == {"decoded", "progress"}
    decoded = codec.decode(outs["decoded"].value, expect=DECODED)
    assert outs["decoded"].key == request["id"].encode()
    assert decoded["request"] == request
    assert decoded["specs"]["width"] == 568 and decoded["specs"]["height"] == 320
    assert len(decoded["frames"]) == decoded["specs"]["nframes"] == len(decoded["timestamps"])
    assert all(frame[:2] == b"\xff\xd8" for frame in decoded["frames"])  # JPEG
    assert {"fetch", "decode", "encode"} <= set(decoded["timing"])
    assert len(outs["decoded"].value) < 1_000_000
    progress = codec.decode(outs["progress"].value, expect=RESULT)
    assert progress["status"] == {"classify": "pending", "video": "done"}


async def test_an_upload_reference_reads_from_the_upload_store(step):
    request = clip_request("upload://abc.mov")
    outs = by_topic(await step(codec.encode(REQUEST, request), ORIGIN))
    assert codec.decode(outs["decoded"].value)["videoname"] == "abc.mov"


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
    value = codec.encode(REQUEST, request)
    outs = by_topic(await step(value, ORIGIN))
    assert set(outs) == {"results", "deadletter"}
    result = codec.decode(outs["results"].value, expect=RESULT)
    assert result["error_code"] == code
    assert request["id"] in result["error_msg"]
    assert result["status"] == {"classify": "error", "video": "error"}
    letter = codec.decode(outs["deadletter"].value, expect=DEAD_LETTER)
    assert letter["value"] == value and letter["clip_id"] == request["id"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("clipguard.requests", 2, 41)


async def test_a_message_that_is_not_ours_goes_to_dead_letters_untouched(step):
    outs = await step(b"\x00\x01 definitely not avro", ORIGIN)
    assert [out.topic for out in outs] == ["deadletter"]
    letter = codec.decode(outs[0].value, expect=DEAD_LETTER)
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
