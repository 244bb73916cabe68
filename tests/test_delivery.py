"""What the agents do when Kafka refuses an output: retry what can pass, answer what cannot."""

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from streams.app import Runtime, Undeliverable, _deliver, is_permanent
from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, default_codec
from streams.errors import ErrorCode
from streams.ledger import Ledger
from streams.pipeline import Origin, Out
from streams.settings import Settings
from streams.topics import Topic
from tests.kafka_io import clip_request

codec = default_codec()


def wrapped(error):
    try:
        raise error
    except Exception as exc:
        try:
            raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        except ProducerSendError as outer:
            return outer


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (wrapped(MessageSizeTooLargeError()), True),
        (MessageSizeTooLargeError(), True),
        (ProducerSendError("no transaction producer"), True),
        (wrapped(KafkaConnectionError()), False),
        (KafkaTimeoutError(), False),
    ],
)
def test_only_what_no_retry_can_change_is_permanent(exc, permanent):
    assert is_permanent(exc) is permanent


class Topic_:
    def __init__(self, failures=()):
        self.failures, self.sent, self.headers = list(failures), [], []

    async def send(self, key, value, headers=None):
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((key, value))
        self.headers.append(headers)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def runtime(**topics):
    all_topics = {topic: Topic_() for topic in Topic} | topics
    return Runtime(Settings(), SimpleNamespace(), codec, all_topics, {}, Ledger(60, 3600))


async def test_a_passing_outage_is_retried_until_kafka_takes_the_output():
    rt = runtime(**{Topic.RESULTS: Topic_([KafkaConnectionError()])})
    await rt.send([Out(Topic.RESULTS, b"k", b"v")])
    assert rt.topics[Topic.RESULTS].sent == [(b"k", b"v")]


async def test_a_refused_output_is_not_retried():
    rt = runtime(**{Topic.DECODED: Topic_([wrapped(MessageSizeTooLargeError())] * 3)})
    with pytest.raises(Undeliverable):
        await rt.send([Out(Topic.DECODED, b"k", b"v")])


async def test_a_decoded_clip_kafka_refuses_becomes_an_error_result_and_a_dead_letter():
    rt = runtime(**{Topic.DECODED: Topic_([wrapped(MessageSizeTooLargeError())])})
    request = clip_request("upload://x.mp4")
    key = request["id"].encode()
    decoded = {
        "request": request,
        "started_at": "",
        "videoname": "x.mp4",
        "filesize": 1,
        "specs": dict.fromkeys(
            ("width", "height", "nframes", "original_width", "original_height"), 2
        )
        | dict.fromkeys(("fps", "duration", "original_fps"), 1.0)
        | {"original_nframes": 2},
        "frames": [b"\xff" * 10],
        "timestamps": [0.0],
        "timing": {},
    }
    value = codec.serialize(REQUEST, request)
    outs = [Out(Topic.DECODED, key, codec.serialize(DECODED, decoded))]
    await _deliver(rt, outs, value, Origin("clipguard.requests", 0, 5, key))
    ((result_key, result_value),) = rt.topics[Topic.RESULTS].sent
    result = codec.parse(result_value, expect=RESULT)
    assert result_key == key and result["error_code"] == ErrorCode.UNDELIVERABLE
    assert result["status"]["classify"] == "error"
    ((_, letter_value),) = rt.topics[Topic.DEADLETTER].sent
    assert codec.parse(letter_value, expect=DEAD_LETTER)["value"] == value
    (headers,) = rt.topics[Topic.DEADLETTER].headers
    assert dict(headers)["__connect.errors.stage"] == b"deliver"
    assert rt.topics[Topic.RESULTS].headers == [None]


def _late_runtime(rebalancing=False):
    from aiokafka.structs import TopicPartition

    from streams.results import base_result

    request = clip_request("upload://x.mp4")
    key = request["id"].encode()
    recovered = SimpleNamespace(is_set=lambda: True)
    app = SimpleNamespace(
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=recovered)),
        rebalancing=rebalancing,
        consumer=SimpleNamespace(assignment=lambda: {TopicPartition("clipguard.results", 0)}),
    )
    rt = runtime()
    rt.app = app
    rt.ledger = Ledger(deadline_s=60, retention_s=3600)
    rt.table = {key: codec.serialize(RESULT, base_result(request, started_at=""))}
    rt.ledger.stored(0, key, base_result(request, started_at=""), now=0)  # pending since 1970
    return rt


async def test_a_late_clip_is_answered_by_a_worker_sure_of_its_partitions():
    from streams.app import answer_late_clips

    rt = _late_runtime()
    await answer_late_clips(rt)
    ((_, value),) = rt.topics[Topic.RESULTS].sent
    assert codec.parse(value, expect=RESULT)["error_code"] == ErrorCode.DEADLINE_EXCEEDED


async def test_no_deadline_answers_during_a_rebalance_or_right_after_a_stall():
    from streams.app import answer_late_clips

    rebalancing = _late_runtime(rebalancing=True)
    await answer_late_clips(rebalancing)
    assert rebalancing.topics[Topic.RESULTS].sent == []
    stalled = _late_runtime()
    stalled.last_deadline_check = -1e9  # the previous tick was long ago: frozen or starved
    await answer_late_clips(stalled)
    assert stalled.topics[Topic.RESULTS].sent == []
    await answer_late_clips(stalled)  # the next tick is on time, and the clock started afresh
    assert stalled.topics[Topic.RESULTS].sent == []
