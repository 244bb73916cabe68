"""The worker side of the HTTP API (streams/service.py), without a broker."""

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

from streams.codec import REQUEST, RESULT, default_codec
from streams.errors import QueueUnavailable
from streams.results import base_result
from streams.service import WorkerService
from streams.settings import Settings
from streams.topics import Topic
from tests.kafka_io import clip_request


class FakeTopic:
    def __init__(self, fail=False):
        self.sent, self.fail = [], fail

    async def send(self, key, value):
        if self.fail:
            raise KafkaConnectionError("broker down")
        self.sent.append((key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def service(topics):
    runtime = SimpleNamespace(settings=Settings(), codec=default_codec(), topics=topics)
    return WorkerService(runtime)


async def test_submit_publishes_the_pending_status_before_the_request():
    topics = {Topic.PROGRESS: FakeTopic(), Topic.REQUESTS: FakeTopic()}
    request = clip_request("upload://x.mp4")
    await service(topics).submit(request, base_result(request, started_at=""))
    codec = default_codec()
    ((key, request_value),) = topics[Topic.REQUESTS].sent
    ((_, progress_value),) = topics[Topic.PROGRESS].sent
    assert key == request["id"].encode()
    assert codec.parse(request_value, expect=REQUEST) == request
    assert codec.parse(progress_value, expect=RESULT)["status"]["classify"] == "pending"


async def test_a_kafka_failure_reaches_the_api_as_queue_unavailable():
    topics = {Topic.PROGRESS: FakeTopic(fail=True), Topic.REQUESTS: FakeTopic()}
    request = clip_request("upload://x.mp4")
    with pytest.raises(QueueUnavailable, match=request["id"]):
        await service(topics).submit(request, base_result(request, started_at=""))
    assert topics[Topic.REQUESTS].sent == []  # no request without its pending status
