"""Dead letters read back: list them, and replay chosen ones after a fix (`clipguard deadletter`).

A dead letter (`clipguard.DeadLetter`, written by `streams.pipeline.dead_letter`) keeps the
original message byte for byte, its key and where it was read. Replaying one produces that
value, with that key, to that topic again, so the pipeline takes it as if it had just arrived.
Only clip requests are replayed: dead letters read from the requests topic or from a tenant's
intake topic (back to that intake topic, so the tenant check runs again). A decoded clip, a
result or progress message, or a deadline letter (it holds a pending result) is skipped, with
the reason: replaying a decoded clip would skip the intake checks.

Reading is bounded: from the beginning of the dead-letter topic (or from `since`) to its end
offsets when the read starts; dead letters written meanwhile (a replayed request that fails
again, say) are not read, so a replay never feeds on itself. Replaying the same dead letter
twice produces the request twice; that is harmless, results are keyed by the clip id and the
result table keeps the better of two (`streams.pipeline.should_store`).

This module is Kafka client code (aiokafka), run by the CLI, not by a pipeline step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Collection, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError
from aiokafka.structs import TopicPartition

from streams.admin import client_options
from streams.codec import DEAD_LETTER, AvroCodec, default_codec
from streams.errors import CodecError, ConfigError, QueueUnavailable
from streams.records import DeadLetter
from streams.settings import Settings
from streams.topics import Topic, intake_topics

log = logging.getLogger(__name__)

# Reading from `since` starts this much earlier on the records' Kafka timestamps, so that a
# broker clock behind the worker's (LogAppendTime) cannot hide a dead letter; the selection
# itself is on `failed_at`.
SINCE_SLACK = timedelta(minutes=10)
# A read that makes no progress for this long gives up (the broker stopped answering).
STALL_S = 60.0

DECODED_SKIP = (
    "read from the decoded topic: replaying a decoded clip would skip the intake checks (id, "
    "tenant, key); send the clip's request again instead"
)
RESULT_SKIP = "read from the results or progress topic: only clip requests are replayed"
NO_KEY_SKIP = "no message key: the intake refuses a request whose key is not its clip id"
DEADLINE_SKIP = (
    "a deadline letter holds the clip's pending result, not its request: send the clip's "
    "request again instead"
)


@dataclass(frozen=True)
class Selection:
    """Which dead letters to take; every criterion given must hold (None: any)."""

    stage: str | None = None
    code: int | None = None
    ids: frozenset[str] | None = None
    since: datetime | None = None  # failed_at >= since (a naive time is UTC)
    until: datetime | None = None  # failed_at < until

    @property
    def everything(self) -> bool:
        return (self.stage, self.code, self.ids, self.since, self.until) == (None,) * 5

    def matches(self, record: DeadLetter) -> bool:
        if self.stage is not None and record["stage"] != self.stage:
            return False
        if self.code is not None and record["error_code"] != self.code:
            return False
        if self.ids is not None and record["clip_id"] not in self.ids:
            return False
        if self.since is None and self.until is None:
            return True
        failed_at = parse_time(record["failed_at"])
        if failed_at is None:
            return False
        if self.since is not None and failed_at < aware(self.since):
            return False
        return self.until is None or failed_at < aware(self.until)


@dataclass(frozen=True)
class Letter:
    """One dead letter: where it lies on the dead-letter topic, and what its record says."""

    partition: int  # of the dead-letter topic
    offset: int
    failed_at: str
    stage: str
    error_code: int
    error_msg: str
    clip_id: str | None
    topic: str  # where the original message was read
    origin_partition: int
    origin_offset: int
    skip: str | None  # why it is not replayed; None: it is

    @property
    def origin(self) -> str:
        return f"{self.topic}[{self.origin_partition}]@{self.origin_offset}"


@dataclass
class ReplayReport:
    topic: str  # the dead-letter topic read
    dry_run: bool
    matched: list[Letter] = field(default_factory=list)
    replayed: list[Letter] = field(default_factory=list)  # in a dry run: would be
    unreadable: int = 0  # records on the dead-letter topic that are no DeadLetter

    @property
    def skipped(self) -> dict[str, list[Letter]]:
        by_reason: dict[str, list[Letter]] = {}
        for letter in self.matched:
            if letter.skip is not None:
                by_reason.setdefault(letter.skip, []).append(letter)
        return by_reason

    @property
    def replayed_ids(self) -> list[str]:
        return [letter.clip_id or "-" for letter in self.replayed]

    def lines(self) -> list[str]:
        """What `clipguard deadletter replay` prints: one line a dead letter, then the counts."""
        verb = "would replay" if self.dry_run else "replayed"
        out = []
        for letter in self.matched:
            where = f"{letter.clip_id or '-'} {letter.origin}"
            if letter.skip is None:
                out.append(f"{verb} {where} (stage {letter.stage}, code {letter.error_code})")
            else:
                out.append(f"skipped {where}: {letter.skip}")
        skipped = self.skipped
        summary = (
            f"{self.topic}: {len(self.matched)} matched, {len(self.replayed)} {verb}, "
            f"{sum(map(len, skipped.values()))} skipped"
        )
        if self.unreadable:
            summary += f", {self.unreadable} unreadable records passed over"
        out.append(summary)
        out.extend(f"  {len(letters)} skipped: {reason}" for reason, letters in skipped.items())
        return out


def skip_reason(settings: Settings, record: DeadLetter) -> str | None:
    """Why a dead letter cannot be replayed (None: it can, to its original topic)."""
    topic = record["topic"]
    if record["stage"] == "deadline":
        return DEADLINE_SKIP
    if topic == settings.topic(Topic.REQUESTS) or topic in intake_topics(settings):
        return NO_KEY_SKIP if not record["key"] else None
    if topic == settings.topic(Topic.DECODED):
        return DECODED_SKIP
    if topic in (settings.topic(Topic.RESULTS), settings.topic(Topic.PROGRESS)):
        return RESULT_SKIP
    return (
        f"read from {topic}, not a requests topic of this deployment (CLIPGUARD_TOPIC_PREFIX "
        f"{settings.topic_prefix}, intake topics of CLIPGUARD_KAFKA_TENANTS)"
    )


def letter_of(settings: Settings, partition: int, offset: int, record: DeadLetter) -> Letter:
    return Letter(
        partition=partition,
        offset=offset,
        failed_at=record["failed_at"],
        stage=record["stage"],
        error_code=record["error_code"],
        error_msg=record["error_msg"],
        clip_id=record["clip_id"],
        topic=record["topic"],
        origin_partition=record["partition"],
        origin_offset=record["offset"],
        skip=skip_reason(settings, record),
    )


def table(letters: Iterable[Letter], message_width: int = 80) -> list[str]:
    """`clipguard deadletter list`: a header and one tab-separated line a dead letter."""
    lines = ["failed_at\tstage\tcode\tclip_id\torigin\tmessage"]
    for letter in letters:
        message = " ".join(letter.error_msg.split())
        if len(message) > message_width:
            message = message[: message_width - 3] + "..."
        lines.append(
            f"{letter.failed_at}\t{letter.stage}\t{letter.error_code}\t{letter.clip_id or '-'}"
            f"\t{letter.origin}\t{message}"
        )
    return lines


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (a naive one is UTC); None when it is not one."""
    try:
        return aware(datetime.fromisoformat(text))
    except ValueError:
        return None


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def list_letters(
    settings: Settings,
    *,
    stage: str | None = None,
    code: int | None = None,
    ids: Collection[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> ReplayReport:
    """The dead letters that match, in partition and offset order (a dry run's report)."""
    return await replay(
        settings,
        stage=stage,
        code=code,
        ids=ids,
        since=since,
        until=until,
        limit=limit,
        dry_run=True,
    )


async def replay(
    settings: Settings,
    *,
    stage: str | None = None,
    code: int | None = None,
    ids: Collection[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
    limit: int | None = None,
) -> ReplayReport:
    """Put the matching dead letters' original messages back where they were read.

    Each replayable one (see `skip_reason`) is produced with its original key and value, byte
    for byte, to its original topic, acknowledged by all in-sync replicas before the next; at
    most `limit` dead letters are taken (the first in partition, then offset order). Kafka
    errors: ConfigError when the broker cannot be reached or refuses the read, QueueUnavailable
    when a replayed message is refused (the report of what was replayed before is logged).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit {limit}: take at least one dead letter")
    selection = Selection(stage, code, None if ids is None else frozenset(ids), since, until)
    topic = settings.topic(Topic.DEADLETTER)
    report = ReplayReport(topic, dry_run)
    codec = default_codec()
    producer = None if dry_run else await _started_producer(settings)
    try:
        async with aclosing(_read(settings, codec, topic, selection.since)) as records:
            async for partition, offset, record in records:
                if record is None:
                    report.unreadable += 1
                    continue
                if not selection.matches(record):
                    continue
                letter = letter_of(settings, partition, offset, record)
                report.matched.append(letter)
                if letter.skip is None:
                    if producer is not None:
                        await _produce(producer, record, report)
                    report.replayed.append(letter)
                if limit is not None and len(report.matched) >= limit:
                    break
    finally:
        if producer is not None:
            await producer.stop()
    return report


async def _produce(producer: AIOKafkaProducer, record: DeadLetter, report: ReplayReport) -> None:
    try:
        await producer.send_and_wait(record["topic"], value=record["value"], key=record["key"])
    except KafkaError as exc:
        log.error("replay stopped; replayed before: %s", ", ".join(report.replayed_ids) or "none")
        raise QueueUnavailable(
            f"{record['topic']} refused the replayed message from "
            f"{record['topic']}[{record['partition']}]@{record['offset']} ({exc!r}); "
            f"{len(report.replayed)} replayed before it",
            clip_id=record["clip_id"],
        ) from exc


async def _started_producer(settings: Settings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        **client_options(settings),
    )
    await _start(producer, settings)
    return producer


async def _start(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient, settings: Settings
) -> None:
    stop = client.close if isinstance(client, AIOKafkaAdminClient) else client.stop
    try:
        await client.start()
    except KafkaConnectionError as exc:
        await stop()
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP): {exc}"
        ) from exc
    except KafkaError as exc:  # e.g. a refused SASL login
        await stop()
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap} refused user {settings.kafka_username!r}: {exc}"
        ) from exc


async def _read(
    settings: Settings, codec: AvroCodec, topic: str, since: datetime | None
) -> AsyncGenerator[tuple[int, int, DeadLetter | None], None]:
    """(partition, offset, record or None when unreadable) of the topic, up to its end offsets.

    Partition after partition, each in offset order, so that a limit takes the same dead letters
    on every run. No consumer group: nothing is committed, any number of reads may run at once.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,  # a dead letter may hold a decoded clip
        fetch_max_bytes=64 * 1024 * 1024,
        **client_options(settings),
    )
    await _start(consumer, settings)
    try:
        partitions = await _partitions(settings, topic)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts = await _starts(consumer, partitions, ends, since)
        for tp in partitions:
            if starts[tp] >= ends[tp]:
                continue
            consumer.assign([tp])  # one at a time: nothing fetched ahead from the others
            consumer.seek(tp, starts[tp])
            async for item in _read_partition(consumer, codec, tp, ends[tp]):
                yield item
    except KafkaError as exc:
        raise ConfigError(f"reading {topic} failed: {exc!r}") from exc
    finally:
        await consumer.stop()


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from the broker (a consumer without a subscription has none)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **client_options(settings)
    )
    await _start(admin, settings)
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] == TopicAuthorizationFailedError.errno:
        raise ConfigError(f"user {settings.kafka_username!r} may not read {topic}")
    if described["error_code"] != 0 or not described["partitions"]:
        raise ConfigError(
            f"no dead-letter topic {topic} (CLIPGUARD_TOPIC_PREFIX {settings.topic_prefix})"
        )
    numbers = sorted(int(p["partition"]) for p in described["partitions"])
    return [TopicPartition(topic, number) for number in numbers]


async def _starts(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    ends: dict[TopicPartition, int],
    since: datetime | None,
) -> dict[TopicPartition, int]:
    beginnings: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    if since is None:
        return beginnings
    at_ms = int((aware(since) - SINCE_SLACK).timestamp() * 1000)
    found = await consumer.offsets_for_times(dict.fromkeys(partitions, max(at_ms, 0)))
    # None: no record at or after that time, so nothing to read there.
    return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in partitions}


async def _read_partition(
    consumer: AIOKafkaConsumer, codec: AvroCodec, tp: TopicPartition, end: int
) -> AsyncGenerator[tuple[int, int, DeadLetter | None], None]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STALL_S
    while await consumer.position(tp) < end:
        batches = await consumer.getmany(tp, timeout_ms=500)
        if batches:
            deadline = loop.time() + STALL_S
        elif loop.time() > deadline:
            raise ConfigError(
                f"reading {tp.topic}[{tp.partition}] made no progress for {STALL_S:.0f} s"
            )
        for message in batches.get(tp, []):
            if message.offset >= end:  # written after the read began
                return
            yield tp.partition, message.offset, _record(codec, message.value)


def _record(codec: AvroCodec, value: bytes | None) -> DeadLetter | None:
    if value is None:
        return None
    try:
        return codec.parse(value, expect=DEAD_LETTER)
    except CodecError:
        return None
