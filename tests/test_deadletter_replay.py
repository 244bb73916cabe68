"""Replaying dead letters on the suite's real broker: chosen originals back, byte for byte."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streams.admin import ensure_topics
from streams.cli import main
from streams.codec import REQUEST, default_codec
from streams.deadletters import DECODED_SKIP, RESULT_SKIP, list_letters, replay
from streams.errors import ErrorCode
from streams.pipeline import HEADER_CLIP_ID, HEADER_OFFSET, Origin, Out, dead_letter
from streams.settings import ENV_PREFIX, Settings
from streams.topics import Topic
from tests import kafka_io
from tests.kafka_io import clip_request

pytestmark = pytest.mark.kafka
codec = default_codec()


def worker_kafka_fields() -> dict[str, str]:
    """kafka_io.WORKER_SETTINGS (CLIPGUARD_KAFKA_* variables) as Settings fields."""
    return {k.removeprefix(ENV_PREFIX).lower(): v for k, v in kafka_io.WORKER_SETTINGS.items()}


async def records(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes, list]]:
    """(key, value, headers) of every record of `topic` now, as the suite's super user reads."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # what assign() starts from
        **kafka_io.CLIENT,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        found = []
        deadline = asyncio.get_running_loop().time() + 30
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            assert asyncio.get_running_loop().time() < deadline, f"{topic} was not read in time"
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                found += [(m.key, m.value, list(m.headers)) for m in messages]
    finally:
        await consumer.stop()
    return found


class Letters:
    """Dead letters as the worker writes them, on a topic prefix of the test's own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outs: dict[str, Out] = {}
        self.ids: dict[str, str] = {}
        self.originals: dict[str, tuple[str, bytes, bytes]] = {}  # name -> topic, key, value

    def add(self, name: str, topic: Topic | str, stage: str, code: ErrorCode) -> None:
        """A dead letter of a real clip request read from `topic` (partition 1, offset 100+)."""
        request = clip_request("file:///srv/media/cam1/alarm.mp4")
        key, value = request["id"].encode(), codec.serialize(REQUEST, request)
        real_topic = self.settings.topic(topic)
        self.originals[name] = (real_topic, key, value)
        origin = Origin(real_topic, 1, 100 + len(self.outs), key)
        message = f"clip {request['id']}: {name} failed"
        self.outs[name] = dead_letter(
            codec, origin, value, stage=stage, code=code, message=message, clip_id=request["id"]
        )
        self.ids[name] = request["id"]

    async def produce(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, acks="all", **kafka_io.CLIENT
        )
        await producer.start()
        try:
            for out in self.outs.values():
                await producer.send_and_wait(
                    self.settings.topic(out.topic),
                    value=out.value,
                    key=out.key,
                    headers=list(out.headers),
                )
        finally:
            await producer.stop()


@pytest.fixture
async def letters(kafka_bootstrap: str, topic_prefix: str) -> Letters:
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        kafka_tenants=("acme",),
        **worker_kafka_fields(),
    )
    await ensure_topics(settings)
    letters = Letters(settings)
    letters.add("refused", Topic.REQUESTS, "deliver", ErrorCode.UNDELIVERABLE)
    letters.add("video", Topic.REQUESTS, "decode", ErrorCode.INVALID_VIDEO)
    letters.add("intake", "intake.acme", "deliver", ErrorCode.UNDELIVERABLE)
    letters.add("decoded", Topic.DECODED, "deliver", ErrorCode.UNDELIVERABLE)
    letters.add("result", Topic.RESULTS, "results", ErrorCode.ID_CONFLICT)
    await letters.produce()
    return letters


async def test_a_replay_puts_back_exactly_the_chosen_requests_byte_for_byte(letters):
    settings = letters.settings
    report = await replay(settings, code=ErrorCode.UNDELIVERABLE)
    assert sorted(letter.clip_id for letter in report.matched) == sorted(
        letters.ids[n] for n in ("refused", "intake", "decoded")
    )
    assert sorted(report.replayed_ids) == sorted(letters.ids[n] for n in ("refused", "intake"))
    assert {reason: [x.clip_id for x in xs] for reason, xs in report.skipped.items()} == {
        DECODED_SKIP: [letters.ids["decoded"]]
    }
    assert "intake checks" in DECODED_SKIP
    topic, key, value = letters.originals["refused"]
    assert [(k, v) for k, v, _ in await records(settings, topic)] == [(key, value)]
    topic, key, value = letters.originals["intake"]  # back to the tenant's intake topic
    assert [(k, v) for k, v, _ in await records(settings, topic)] == [(key, value)]
    assert await records(settings, settings.topic(Topic.DECODED)) == []
    # The dead letters themselves, with their headers, are still there (30 days).
    kept = await records(settings, settings.topic(Topic.DEADLETTER))
    assert len(kept) == 5
    assert all((HEADER_CLIP_ID, key) in headers for key, _, headers in kept)
    assert all(any(name == HEADER_OFFSET for name, _ in headers) for _, _, headers in kept)


async def test_a_dry_run_produces_nothing_and_filters_combine(letters):
    settings = letters.settings
    report = await replay(settings, stage="deliver", dry_run=True)
    assert len(report.matched) == 3 and len(report.replayed) == 2
    assert report.lines()[-2].endswith("3 matched, 2 would replay, 1 skipped")
    assert await records(settings, settings.topic(Topic.REQUESTS)) == []
    chosen = await replay(settings, ids=[letters.ids["video"], letters.ids["result"]], dry_run=True)
    assert [x.clip_id for x in chosen.replayed] == [letters.ids["video"]]
    assert list(chosen.skipped) == [RESULT_SKIP]
    now = datetime.now(UTC)
    assert (await list_letters(settings, since=now + timedelta(hours=1))).matched == []
    assert len((await list_letters(settings, since=now - timedelta(hours=1))).matched) == 5
    assert len((await list_letters(settings, until=now - timedelta(hours=1))).matched) == 0
    assert len((await list_letters(settings, limit=2)).matched) == 2


async def test_the_cli_lists_and_replays_what_the_filters_choose(letters, monkeypatch, capsys):
    settings = letters.settings
    for name, value in kafka_io.WORKER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIPGUARD_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("CLIPGUARD_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("CLIPGUARD_KAFKA_TENANTS", "acme")

    assert await asyncio.to_thread(main, ["deadletter", "list", "--code", "501"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["failed_at", "stage", "code", "clip_id", "origin", "message"]
    assert sorted(line.split("\t")[3] for line in lines[1:]) == sorted(
        letters.ids[n] for n in ("refused", "intake", "decoded")
    )
    row = next(line.split("\t") for line in lines if letters.ids["refused"] in line)
    assert row[1:3] == ["deliver", "501"]
    assert row[4] == f"{settings.topic(Topic.REQUESTS)}[1]@100"

    with pytest.raises(SystemExit) as refused:  # no filter, no --all
        await asyncio.to_thread(main, ["deadletter", "replay"])
    assert refused.value.code == 2
    assert "--all" in capsys.readouterr().err

    argv = ["deadletter", "replay", "--id", letters.ids["video"], letters.ids["decoded"]]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert f"replayed {letters.ids['video']}" in out and f"skipped {letters.ids['decoded']}" in out
    topic, key, value = letters.originals["video"]
    assert [(k, v) for k, v, _ in await records(settings, topic)] == [(key, value)]


async def test_a_missing_dead_letter_topic_is_one_line_and_exit_2(
    kafka_bootstrap, monkeypatch, capsys
):
    for name, value in kafka_io.WORKER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIPGUARD_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CLIPGUARD_TOPIC_PREFIX", "test-no-such-prefix")
    assert await asyncio.to_thread(main, ["deadletter", "list"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("clipguard: error: no dead-letter topic test-no-such-prefix.deadletter")
