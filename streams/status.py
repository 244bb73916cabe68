"""`clipguard status`: is it working? One screen read from the configured broker.

What it shows, all read with the worker's settings and credentials (`CLIPGUARD_KAFKA_*`):

- the workers in the consumer group `settings.app_id` (client id, host) and the partitions each
  one owns (Kafka's DescribeGroups; Faust's assignor writes the standard consumer assignment,
  its own data rides in the user data, so the standard partitions list parses);
- the lag of each agent's input: the group's committed offsets behind the end offsets, summed
  over the partitions, for `requests`, each tenant's intake topic, `decoded` and
  `results`+`progress` (a partition without a committed offset counts from its first offset,
  as the workers start there: `auto_offset_reset=earliest`);
- results produced in the last minute and the last hour, and dead letters in the last hour:
  end offset minus the offset at that time (Kafka's offsets-for-times on the records'
  timestamps), summed over the partitions;
- the live model pack: `model` and `version` of the newest result that has one (error results
  carry none), read from the last records of each results partition.

No consumer group is joined and nothing is committed, so it is safe to run any time, anywhere.
A broker that cannot be reached or refuses the login is a `ConfigError` (the CLI: one line,
exit 2). This module is Kafka client code (aiokafka), run by the CLI, not by a pipeline step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    GroupIdNotFound,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    for_code,
)
from aiokafka.structs import TopicPartition

from streams.admin import client_options
from streams.codec import RESULT, AvroCodec, default_codec
from streams.errors import CodecError, ConfigError
from streams.settings import Settings
from streams.topics import Topic, intake_topics

MINUTE_S = 60.0
HOUR_S = 3600.0
# The newest result with a model is looked for among this many last records of each partition.
LOOKBACK = 20
# Reading those last records gives up after this (the broker stopped answering).
READ_TIMEOUT_S = 10.0
# DescribeGroups answers while the coordinator moves: tried again this many times.
COORDINATOR_TRIES = 5


@dataclass(frozen=True)
class Member:
    """One worker (consumer) of the group and what it owns."""

    client_id: str
    host: str
    member_id: str
    partitions: dict[str, list[int]]  # topic -> partitions, sorted; empty while rebalancing

    def owns(self, topic: str) -> list[int]:
        return self.partitions.get(topic, [])


@dataclass(frozen=True)
class Lag:
    """How far the group's committed offsets are behind one agent's input topics."""

    name: str  # what the screen calls it: requests, intake.<tenant>, decoded, results+progress
    topics: list[str]
    lag: int  # sum over the partitions of end offset - committed offset
    end: int  # sum of the end offsets (messages ever written, retention aside)
    uncommitted: int  # partitions with records but no committed offset (counted from the first)


@dataclass(frozen=True)
class Status:
    bootstrap: str
    topic_prefix: str
    group: str
    state: str  # Kafka's group state: Stable, PreparingRebalance, Empty, Dead...
    members: list[Member]
    lags: list[Lag]
    results_last_minute: int
    results_last_hour: int
    dead_letters_last_hour: int
    dead_letters_kept: int  # on the dead-letter topic now (its retention is 30 days)
    newest_result_at: str | None  # Kafka timestamp of the newest result, ISO 8601 UTC
    model: str | None  # the live model pack: of the newest result that names one
    version: str | None
    model_seen_at: str | None
    missing_topics: list[str] = field(default_factory=list)
    checked_at: str = ""

    def lag_of(self, name: str) -> Lag | None:
        return next((lag for lag in self.lags if lag.name == name), None)


async def status(settings: Settings, now: float | None = None) -> Status:
    """The deployment's status as the broker at `settings.kafka_bootstrap` sees it."""
    now = time.time() if now is None else now
    options = client_options(settings)  # ConfigError when the settings do not add up
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **options)
    await _start(admin, settings)
    try:
        group_state, members = await _members(admin, settings)
        partitions, missing = await _partitions(admin, settings)
        committed = await _committed(admin, settings)
    except KafkaConnectionError as exc:
        raise ConfigError(_unreachable(settings, exc)) from exc
    except KafkaError as exc:
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap} refused the status: {exc!r}"
        ) from exc
    finally:
        await admin.close()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, **options
    )
    await _start(consumer, settings)
    try:
        every = [tp for tps in partitions.values() for tp in tps]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(every) if every else {}
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(every) if every else {}
        results = partitions.get(settings.topic(Topic.RESULTS), [])
        letters = partitions.get(settings.topic(Topic.DEADLETTER), [])
        last_minute = await _since(consumer, results, ends, now - MINUTE_S)
        last_hour = await _since(consumer, results, ends, now - HOUR_S)
        letters_hour = await _since(consumer, letters, ends, now - HOUR_S)
        newest = await _newest(consumer, default_codec(), results, starts, ends)
    except KafkaConnectionError as exc:
        raise ConfigError(_unreachable(settings, exc)) from exc
    except KafkaError as exc:
        raise ConfigError(f"reading offsets at {settings.kafka_bootstrap} failed: {exc!r}") from exc
    finally:
        await consumer.stop()

    return Status(
        bootstrap=settings.kafka_bootstrap,
        topic_prefix=settings.topic_prefix,
        group=settings.app_id,
        state=group_state,
        members=members,
        lags=_lags(settings, partitions, committed, starts, ends),
        results_last_minute=last_minute,
        results_last_hour=last_hour,
        dead_letters_last_hour=letters_hour,
        dead_letters_kept=sum(ends[tp] - starts[tp] for tp in letters),
        newest_result_at=newest.newest_at,
        model=newest.model,
        version=newest.version,
        model_seen_at=newest.model_at,
        missing_topics=missing,
        checked_at=_iso(now),
    )


# --- reading -------------------------------------------------------------------------------


def _unreachable(settings: Settings, exc: BaseException) -> str:
    return f"cannot reach Kafka at {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP): {exc}"


async def _start(client: AIOKafkaAdminClient | AIOKafkaConsumer, settings: Settings) -> None:
    stop = client.close if isinstance(client, AIOKafkaAdminClient) else client.stop
    try:
        await client.start()
    except KafkaConnectionError as exc:
        await stop()
        raise ConfigError(_unreachable(settings, exc)) from exc
    except KafkaError as exc:  # e.g. a refused SASL login
        await stop()
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap} refused user {settings.kafka_username!r}: {exc}"
        ) from exc


async def _members(admin: AIOKafkaAdminClient, settings: Settings) -> tuple[str, list[Member]]:
    """The group's state and members; ("Dead", []) for a group Kafka does not know."""
    group = settings.app_id
    for attempt in range(COORDINATOR_TRIES):
        responses = await admin.describe_consumer_groups([group])
        described = [g for r in responses for g in r.to_object()["groups"] if g["group"] == group]
        if not described:
            return "Dead", []
        found = described[0]
        error = for_code(found["error_code"])
        if found["error_code"] == 0:
            members = [member_of(m) for m in found["members"]]
            return str(found["state"]), sorted(members, key=lambda m: (m.client_id, m.member_id))
        if error is GroupIdNotFound:
            return "Dead", []
        if error is GroupAuthorizationFailedError:
            raise ConfigError(
                f"user {settings.kafka_username!r} may not describe group {group} "
                "(CLIPGUARD_APP_ID); the worker's user may"
            )
        if not error.retriable or attempt == COORDINATOR_TRIES - 1:
            raise ConfigError(f"describing group {group} failed: {error.__name__}")
        await asyncio.sleep(0.5)
    return "Dead", []  # not reached


def member_of(described: Mapping[str, Any]) -> Member:
    """A DescribeGroups member: its assignment bytes parsed as the standard consumer one."""
    return Member(
        client_id=str(described["client_id"]),
        host=str(described["client_host"]).lstrip("/"),
        member_id=str(described["member_id"]),
        partitions=assigned_partitions(described["member_assignment"]),
    )


def assigned_partitions(assignment: bytes | None) -> dict[str, list[int]]:
    """Topic -> partitions of a ConsumerProtocol member assignment (empty: none, or no parse)."""
    if not assignment:
        return {}  # a member that has not received its assignment yet (a rebalance)
    try:
        parsed = ConsumerProtocolMemberAssignment.decode(assignment)
    except Exception:  # not the consumer protocol: nothing we can say about it
        return {}
    owned: dict[str, set[int]] = {}
    for topic, numbers in parsed.assignment:
        owned.setdefault(str(topic), set()).update(int(n) for n in numbers)
    return {topic: sorted(numbers) for topic, numbers in sorted(owned.items())}


def watched_topics(settings: Settings) -> dict[str, list[str]]:
    """Screen name -> the topics whose lag it sums: each agent's input topics."""
    lags = {
        Topic.REQUESTS.value: [settings.topic(Topic.REQUESTS)],
        **{f"intake.{tenant}": [topic] for topic, tenant in intake_topics(settings).items()},
        Topic.DECODED.value: [settings.topic(Topic.DECODED)],
        "results+progress": [settings.topic(Topic.RESULTS), settings.topic(Topic.PROGRESS)],
    }
    return lags


async def _partitions(
    admin: AIOKafkaAdminClient, settings: Settings
) -> tuple[dict[str, list[TopicPartition]], list[str]]:
    """The partitions of every topic the screen reads, and the topics that do not exist."""
    names = [t for topics in watched_topics(settings).values() for t in topics]
    names.append(settings.topic(Topic.DEADLETTER))
    described = await admin.describe_topics(names)
    found: dict[str, list[TopicPartition]] = {}
    for topic in described:
        name = str(topic["topic"])
        if topic["error_code"] == TopicAuthorizationFailedError.errno:
            raise ConfigError(f"user {settings.kafka_username!r} may not describe {name}")
        if topic["error_code"] == 0 and topic["partitions"]:
            numbers = sorted(int(p["partition"]) for p in topic["partitions"])
            found[name] = [TopicPartition(name, n) for n in numbers]
    missing = [name for name in names if name not in found]
    if len(missing) == len(names):
        raise ConfigError(
            f"no ClipGuard topic at {settings.kafka_bootstrap} under prefix "
            f"{settings.topic_prefix} (CLIPGUARD_TOPIC_PREFIX): has a worker ever started?"
        )
    return found, missing


async def _committed(admin: AIOKafkaAdminClient, settings: Settings) -> dict[TopicPartition, int]:
    """The group's committed offsets (partitions without one are left out)."""
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    except GroupAuthorizationFailedError as exc:
        raise ConfigError(
            f"user {settings.kafka_username!r} may not read the offsets of group {settings.app_id}"
        ) from exc
    except GroupIdNotFound:
        return {}
    return {tp: int(meta.offset) for tp, meta in offsets.items() if meta.offset >= 0}


def _lags(
    settings: Settings,
    partitions: Mapping[str, list[TopicPartition]],
    committed: Mapping[TopicPartition, int],
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> list[Lag]:
    lags = []
    for name, topics in watched_topics(settings).items():
        tps = [tp for topic in topics for tp in partitions.get(topic, [])]
        if not tps:
            continue
        lag = uncommitted = 0
        for tp in tps:
            position = committed.get(tp)
            if position is None:  # the workers start such a partition at its beginning
                uncommitted += int(ends[tp] > starts[tp])
                position = starts[tp]
            lag += max(0, ends[tp] - max(position, starts[tp]))
        lags.append(Lag(name, topics, lag, sum(ends[tp] for tp in tps), uncommitted))
    return lags


async def _since(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    ends: Mapping[TopicPartition, int],
    at: float,
) -> int:
    """Records written at or after `at` (seconds since the epoch), summed over the partitions."""
    if not partitions:
        return 0
    found = await consumer.offsets_for_times(dict.fromkeys(partitions, max(0, int(at * 1000))))
    # None: no record at or after that time in that partition.
    return sum(0 if found[tp] is None else max(0, ends[tp] - found[tp].offset) for tp in partitions)


@dataclass(frozen=True)
class Newest:
    newest_at: str | None = None
    model: str | None = None
    version: str | None = None
    model_at: str | None = None


async def _newest(
    consumer: AIOKafkaConsumer,
    codec: AvroCodec,
    partitions: list[TopicPartition],
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> Newest:
    """The newest result's time, and the model pack of the newest result that names one."""
    chosen = [tp for tp in partitions if ends[tp] > starts[tp]]
    if not chosen:
        return Newest()
    consumer.assign(chosen)
    for tp in chosen:
        consumer.seek(tp, max(starts[tp], ends[tp] - LOOKBACK))
    newest_ms: int | None = None
    model: tuple[int, str, str] | None = None  # timestamp, name, version
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT_S
    pending = set(chosen)
    while pending and loop.time() < deadline:
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for tp, messages in batches.items():
            for message in messages:
                if message.offset >= ends[tp]:
                    continue
                newest_ms = max(newest_ms or 0, message.timestamp)
                named = _model_of(codec, message.value)
                if named is not None and (model is None or message.timestamp >= model[0]):
                    model = (message.timestamp, *named)
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
    return Newest(
        newest_at=None if newest_ms is None else _iso(newest_ms / 1000),
        model=None if model is None else model[1],
        version=None if model is None else model[2],
        model_at=None if model is None else _iso(model[0] / 1000),
    )


def _model_of(codec: AvroCodec, value: bytes | None) -> tuple[str, str] | None:
    if value is None:
        return None
    try:
        record = codec.parse(value, expect=RESULT)
    except CodecError:
        return None
    return (record["model"], record["version"]) if record["model"] else None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# --- the screen ----------------------------------------------------------------------------


def format_status(report: Status) -> str:
    """One screen: the workers and their partitions, lag, results, dead letters, model pack.

    Topic names are shown without `<CLIPGUARD_TOPIC_PREFIX>.`, Faust's own (the changelog, the
    assignor's leader topic) without `<CLIPGUARD_APP_ID>-`.
    """
    lines = [
        f"ClipGuard at {report.bootstrap}, group {report.group} ({report.state}), "
        f"topics {report.topic_prefix}.*, checked {report.checked_at}",
        "",
    ]
    if not report.members:
        lines.append(f"workers: no worker in group {report.group}")
    else:
        lines.append(f"workers: {len(report.members)}")
        rows = [("client id", "host", "topic", "partitions")]
        for member in report.members:
            owned = sorted(member.partitions.items(), key=lambda item: _order(report, item[0]))
            if not owned:
                rows.append((member.client_id, member.host, "(none yet: rebalancing)", ""))
            for i, (topic, numbers) in enumerate(owned):
                who = (member.client_id, member.host) if i == 0 else ("", "")
                rows.append((*who, _short(report, topic), ranges(numbers)))
        lines += _table(rows)
    lines += ["", "lag (end offsets - committed offsets, all partitions)"]
    lag_rows = [("input", "lag", "end")]
    for lag in report.lags:
        note = f"  ({lag.uncommitted} partitions never committed)" if lag.uncommitted else ""
        lag_rows.append((lag.name, str(lag.lag), str(lag.end) + note))
    lines += _table(lag_rows, right=(1,))
    newest = "none yet" if report.newest_result_at is None else f"at {report.newest_result_at}"
    pack = (
        "no result yet"
        if report.model is None
        else f"{report.model} {report.version} (newest classified result, {report.model_seen_at})"
    )
    results = (
        f"{report.results_last_minute} last minute, {report.results_last_hour} last hour; "
        f"newest {newest}"
    )
    letters = f"{report.dead_letters_last_hour} last hour, {report.dead_letters_kept} on the topic"
    lines += ["", *_table([("results", results), ("dead letters", letters), ("model pack", pack)])]
    if report.missing_topics:
        lines += ["", "missing topics: " + ", ".join(report.missing_topics)]
    return "\n".join(lines)


def _short(report: Status, topic: str) -> str:
    return topic.removeprefix(f"{report.topic_prefix}.").removeprefix(f"{report.group}-")


def _order(report: Status, topic: str) -> tuple[int, str]:
    """Pipeline topics in the order clips flow, then the intake topics, then Faust's own."""
    name = topic.removeprefix(f"{report.topic_prefix}.")
    flow = [Topic.REQUESTS, Topic.DECODED, Topic.RESULTS, Topic.PROGRESS, Topic.DEADLETTER]
    if topic.startswith(f"{report.topic_prefix}.") and name in flow:
        return flow.index(Topic(name)), name
    if topic.startswith(f"{report.topic_prefix}.intake."):
        return len(flow), name
    return len(flow) + 1, topic


def ranges(numbers: Iterable[int]) -> str:
    """0,1,2,3,5 -> '0-3,5'."""
    parts: list[str] = []
    run: list[int] = []
    for number in sorted(numbers):
        if run and number == run[-1] + 1:
            run.append(number)
            continue
        if run:
            parts.append(_run(run))
        run = [number]
    if run:
        parts.append(_run(run))
    return ",".join(parts)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def _table(rows: Sequence[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append(("  " + "  ".join(cells)).rstrip())
    return out
