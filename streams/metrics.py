"""The worker's Prometheus metrics (docs/metrics.md), through `prometheus_client` only.

- `Metrics`: every metric of one worker in a `CollectorRegistry` of its own (never the library's
  global one: tests and several apps in one process do not clash), with recording methods that
  take plain values, so each place that records is one call.
- `ConsumerLag`: where each consumed partition stands: the oldest message an agent is working on
  (or one past the last it finished), against the partition's end offset.
- `MetricsSensor`: a Faust sensor that feeds `ConsumerLag` and counts rebalances.
- `refresh_consumer`: the body of the worker's metrics timer (every `REFRESH_S`): end offsets,
  lag per partition, the assignment, the result table's recovery.
- `record_output`: what `Runtime.send` has just had Kafka accept (results, dead letters).
- `serve`: prometheus_client's own HTTP server on the metrics port, apart from the API.

Label values are tenant names (checked against TENANT_PATTERN before a request is acted on),
risks, error codes, stages, topics and partitions: never a clip id, a camera id or metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from faust import Sensor
from faust.types import TP, AppT, Message
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from streams.codec import RESULT, AvroCodec
from streams.errors import CodecError, ConfigError, ErrorCode
from streams.pipeline import HEADER_ERROR_CODE, HEADER_STAGE, Out
from streams.records import ClassificationResult
from streams.results import DONE, ERROR
from streams.settings import Settings
from streams.topics import Topic, intake_topics

log = logging.getLogger(__name__)

# Seconds: a clip takes ~1-3 s end to end on a quiet worker; the deadline (60 s) is the top.
LATENCY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
# The result's `timing` keys (milliseconds) that become `clipguard_stage_seconds{stage}`:
# fetch, decode, encode (the JPEG hand-off) and classify (the model pack, motion and policy).
STAGES = ("fetch", "decode", "encode", "classify")
# Why a decode child was replaced (streams/stages/pool.py).
RESTART_REASONS = ("crashed", "hung", "out_of_memory", "failed")
REFRESH_S = 5.0
REFRESH_TIMEOUT_S = 5.0
# Messages being processed per partition, at most (a bound, should acks ever go missing).
MAX_TRACKED = 10_000

PartitionKey = tuple[str, int]


class Metrics:
    """One worker's metrics; `registry` is what /metrics serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.clips_received = Counter(
            "clipguard_clips_received_total",
            "Clip requests taken up by the decode step (valid ones), by tenant.",
            ["tenant"],
            registry=reg,
        )
        self.clips_finished = Counter(
            "clipguard_clips_finished_total",
            "Classified clips (final results without an error) this worker produced.",
            ["tenant", "risk"],
            registry=reg,
        )
        self.clips_failed = Counter(
            "clipguard_clips_failed_total",
            "Error results this worker produced, by tenant and error code (docs/errors.md).",
            ["tenant", "error_code"],
            registry=reg,
        )
        self.clip_latency = Histogram(
            "clipguard_clip_latency_seconds",
            "From the request's created_at to its final result accepted by Kafka.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.stage_seconds = Histogram(
            "clipguard_stage_seconds",
            "Time of each stage of a clip, from its final result's timing.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.dead_letters = Counter(
            "clipguard_dead_letters_total",
            "Dead letters this worker produced, by stage and error code.",
            ["stage", "error_code"],
            registry=reg,
        )
        self.lag_records = Gauge(
            "clipguard_consumer_lag_records",
            "Messages of an assigned partition not yet processed (end offset - next to process).",
            ["topic", "partition"],
            registry=reg,
        )
        self.lag_seconds = Gauge(
            "clipguard_consumer_lag_seconds",
            "Age of the oldest message of an assigned partition not yet processed (0: caught up).",
            ["topic", "partition"],
            registry=reg,
        )
        self.assigned_partitions = Gauge(
            "clipguard_assigned_partitions",
            "Partitions assigned to this worker's consumer (every topic, the changelog too).",
            registry=reg,
        )
        self.rebalances = Counter(
            "clipguard_rebalances_total",
            "Consumer group rebalances this worker took part in.",
            registry=reg,
        )
        self.table_recovered = Gauge(
            "clipguard_table_recovered",
            "1 once the result table is recovered from its changelog, else 0.",
            registry=reg,
        )
        self.table_recovery_remaining = Gauge(
            "clipguard_table_recovery_remaining_records",
            "Changelog records the result table still has to read to be recovered.",
            registry=reg,
        )
        self.decode_slots = Gauge(
            "clipguard_decode_slots",
            "Decode child processes (CLIPGUARD_DECODE_WORKERS).",
            registry=reg,
        )
        self.decode_slots_busy = Gauge(
            "clipguard_decode_slots_busy", "Decode slots decoding a clip now.", registry=reg
        )
        self.decode_child_restarts = Counter(
            "clipguard_decode_child_restarts_total",
            "Decode children replaced after a crash, a hang (timeout), running out of memory, "
            "or another failure.",
            ["reason"],
            registry=reg,
        )
        self.model_pack = Info(
            "clipguard_model_pack", "The loaded model pack (models/manifest.json).", registry=reg
        )
        self.sync_in_flight = Gauge(
            "clipguard_sync_requests_in_flight",
            "POST /api/classify?sync=true requests waiting for their result.",
            registry=reg,
        )
        self.sync_timeouts = Counter(
            "clipguard_sync_timeouts_total",
            "sync=true requests answered 504 (no result within CLIPGUARD_SYNC_TIMEOUT_S).",
            registry=reg,
        )
        self.kafka_reachable = Gauge(
            "clipguard_kafka_reachable",
            "1 while Kafka answers the worker's checks (streams/health.py), else 0.",
            registry=reg,
        )
        # Children of bounded label sets exist from the start, so rate() sees them at 0.
        self._stage = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        for reason in RESTART_REASONS:
            self.decode_child_restarts.labels(reason)
        self.lag = ConsumerLag()
        self._lag_keys: set[PartitionKey] = set()

    # -- clips ---------------------------------------------------------------------------

    def clip_received(self, tenant: str) -> None:
        self.clips_received.labels(tenant).inc()

    def result_produced(self, result: ClassificationResult, now: float) -> None:
        """A final result Kafka accepted at `now` (time.time()); a pending one is ignored."""
        state = result["status"]["classify"]
        tenant = result["tenant"]
        if state == DONE and result["error_code"] == ErrorCode.OK:
            self.clips_finished.labels(tenant, result["risk"]).inc()
        elif state in (DONE, ERROR):
            self.clips_failed.labels(tenant, str(int(result["error_code"]))).inc()
        else:
            return
        created = _epoch(result["created_at"])
        if created is not None:
            self.clip_latency.observe(max(0.0, now - created))
        timing = result["timing"]
        for stage, child in self._stage.items():
            ms = timing.get(stage)
            if ms is not None:
                child.observe(max(0.0, ms) / 1000.0)

    def dead_letter(self, stage: str, code: int) -> None:
        self.dead_letters.labels(stage, str(int(code))).inc()

    # -- the worker's parts --------------------------------------------------------------

    def model_pack_loaded(self, name: str, version: str) -> None:
        self.model_pack.info({"name": name, "version": version})

    def watch_decode_pool(self, busy: Callable[[], int], slots: int) -> None:
        """`busy` is read at each scrape (from the metrics server's thread)."""
        self.decode_slots.set(slots)
        self.decode_slots_busy.set_function(lambda: float(busy()))

    def decode_child_restarted(self, reason: str) -> None:
        self.decode_child_restarts.labels(reason).inc()

    def watch_kafka(self, reachable: Callable[[], bool]) -> None:
        """`reachable` (BrokerMonitor.reachable) is read at each scrape."""
        self.kafka_reachable.set_function(lambda: 1.0 if reachable() else 0.0)

    def sync_started(self) -> None:
        self.sync_in_flight.inc()

    def sync_finished(self) -> None:
        self.sync_in_flight.dec()

    def sync_timed_out(self) -> None:
        self.sync_timeouts.inc()

    # -- the consumer --------------------------------------------------------------------

    def rebalanced(self) -> None:
        self.rebalances.inc()

    def consumer_state(
        self,
        assigned: int,
        lag: Mapping[PartitionKey, tuple[int, float]],
        recovered: bool,
        recovery_remaining: int,
    ) -> None:
        """The timer's readings: `lag` maps (topic, partition) to (records, seconds) behind;
        partitions no longer in it lose their series."""
        self.assigned_partitions.set(assigned)
        for topic, partition in self._lag_keys - set(lag):
            with contextlib.suppress(KeyError):
                self.lag_records.remove(topic, str(partition))
                self.lag_seconds.remove(topic, str(partition))
        for (topic, partition), (records, seconds) in lag.items():
            self.lag_records.labels(topic, str(partition)).set(records)
            self.lag_seconds.labels(topic, str(partition)).set(seconds)
        self._lag_keys = set(lag)
        self.table_recovered.set(1 if recovered else 0)
        self.table_recovery_remaining.set(recovery_remaining)


def _epoch(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (ValueError, TypeError, OverflowError):
        return None


class ConsumerLag:
    """Per partition: the messages agents are processing now, and the last one they finished.

    Faust calls `message_in` when a stream takes a message and `message_out` once every stream
    acked it (streams/app.py's agents ack when they move on). The next message to process is the
    lowest offset in progress, else one past the highest finished: `behind` counts from there to
    the partition's end offset. Its age is that of the oldest message in progress; when none is,
    the next one was produced after the last finished one and after the last moment the
    partition was seen caught up, so the younger of the two bounds it.
    Thread-safe (Faust's sensor calls and the timer may come from different threads).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._working: dict[PartitionKey, dict[int, float | None]] = {}
        self._next: dict[PartitionKey, int] = {}
        self._last_done_at: dict[PartitionKey, float] = {}
        self._caught_up_at: dict[PartitionKey, float] = {}
        self._first_seen: dict[PartitionKey, float] = {}

    def message_in(self, topic: str, partition: int, offset: int, timestamp: float | None) -> None:
        with self._lock:
            working = self._working.setdefault((topic, partition), {})
            if len(working) < MAX_TRACKED:
                working[offset] = timestamp

    def message_out(self, topic: str, partition: int, offset: int, timestamp: float | None) -> None:
        key = (topic, partition)
        with self._lock:
            working = self._working.get(key)
            if working is not None:
                working.pop(offset, None)
            if offset + 1 > self._next.get(key, -1):
                self._next[key] = offset + 1
                if timestamp is not None:
                    self._last_done_at[key] = timestamp

    def reset(self) -> None:
        """A rebalance: what was in progress may be dropped, partitions may come and go."""
        with self._lock:
            self._working.clear()
            self._next.clear()
            self._last_done_at.clear()
            self._caught_up_at.clear()
            self._first_seen.clear()

    def known(self, topic: str, partition: int) -> bool:
        """Whether a message of this partition was seen since the last reset."""
        key = (topic, partition)
        with self._lock:
            return bool(self._working.get(key)) or key in self._next

    def behind(
        self, topic: str, partition: int, end: int, position: int | None, now: float
    ) -> tuple[int, float]:
        """(records, seconds) behind `end`; `position`: the consumer's, for a partition with
        no message seen since the last reset."""
        key = (topic, partition)
        with self._lock:
            working = self._working.get(key)
            oldest: float | None = None
            if working:
                first = min(working)
                oldest = working[first]
            else:
                first = self._next.get(key, position if position is not None else end)
            records = max(0, end - first)
            if records == 0:
                self._caught_up_at[key] = now
                return 0, 0.0
            if oldest is None:
                bounds = [
                    t
                    for t in (self._caught_up_at.get(key), self._last_done_at.get(key))
                    if t is not None
                ]
                # Neither known (just assigned, a backlog waiting): counted from first sight.
                oldest = max(bounds) if bounds else self._first_seen.setdefault(key, now)
            return records, max(0.0, now - oldest)


class MetricsSensor(Sensor):
    """Feeds `metrics.lag` with the consumed topics' messages, counts rebalances."""

    def __init__(self, metrics: Metrics, topics: Collection[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.topics = frozenset(topics)

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        if tp.topic in self.topics:
            self.metrics.lag.message_in(tp.topic, tp.partition, offset, message.timestamp)

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        if tp.topic in self.topics:
            self.metrics.lag.message_out(tp.topic, tp.partition, offset, message.timestamp)

    def on_rebalance_start(self, app: AppT) -> dict[str, Any]:
        self.metrics.rebalanced()
        self.metrics.lag.reset()
        state: dict[str, Any] = super().on_rebalance_start(app)
        return state


def consumed_topics(settings: Settings) -> list[str]:
    """The topics the agents consume: lag is reported for these."""
    names = [settings.topic(t) for t in (Topic.REQUESTS, Topic.DECODED, Topic.RESULTS)]
    return [*names, settings.topic(Topic.PROGRESS), *intake_topics(settings)]


async def refresh_consumer(
    metrics: Metrics, app: Any, topics: Collection[str], timeout_s: float = REFRESH_TIMEOUT_S
) -> None:
    """One reading of the Faust consumer and the result table's recovery (the timer's body).

    End offsets come from Kafka (`consumer.highwaters`: one ListOffsets request), not from the
    last fetch, which stops while a partition's buffer is full, i.e. exactly under a backlog.
    A reading that fails or takes over `timeout_s` (a rebalance, an outage) is skipped.
    """
    try:
        consumer = app.consumer
        assigned = set(consumer.assignment())
        tracked = sorted(tp for tp in assigned if tp.topic in topics)
        ends: Mapping[Any, int] = {}
        positions: dict[Any, int | None] = {}
        if tracked:
            ends = await asyncio.wait_for(consumer.highwaters(*tracked), timeout_s)
            for tp in tracked:
                if not metrics.lag.known(tp.topic, tp.partition):
                    positions[tp] = await asyncio.wait_for(consumer.position(tp), timeout_s)
    except Exception as exc:  # not started, rebalancing, Kafka away: the next tick tries again
        log.debug("consumer metrics skipped: %r", exc)
        return
    now = time.time()
    lag = {
        (tp.topic, tp.partition): metrics.lag.behind(
            tp.topic, tp.partition, int(ends[tp]), positions.get(tp), now
        )
        for tp in tracked
        if ends.get(tp) is not None
    }
    recovered, remaining = False, 0
    with contextlib.suppress(Exception):  # tables not set up yet
        recovery = app.tables.recovery
        recovered = bool(recovery.completed.is_set())
        remaining = int(recovery.active_remaining_total())
    metrics.consumer_state(len(assigned), lag, recovered, remaining)


def record_output(metrics: Metrics, codec: AvroCodec, out: Out, now: float) -> None:
    """An output Kafka has just accepted: a result or a dead letter is counted."""
    if out.topic is Topic.RESULTS:
        try:
            result = codec.parse(out.value, expect=RESULT)
        except CodecError:
            return
        metrics.result_produced(result, now)
    elif out.topic is Topic.DEADLETTER:
        headers = dict(out.headers)  # streams/pipeline.py dead_letter_headers
        try:
            code = int(headers.get(HEADER_ERROR_CODE, b"500"))
        except ValueError:
            code = int(ErrorCode.INTERNAL)
        metrics.dead_letter(headers.get(HEADER_STAGE, b"").decode(errors="replace"), code)


def serve(registry: CollectorRegistry, port: int, addr: str) -> threading.Thread | None:
    """prometheus_client's HTTP server for `registry` on addr:port, in a daemon thread; None
    when port is 0. It answers every path with the metrics: nothing else listens there."""
    if not port:
        return None
    try:
        _server, thread = start_http_server(port, addr, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {addr}:{port} (CLIPGUARD_METRICS_PORT, "
            f"CLIPGUARD_METRICS_BIND): {exc}"
        ) from exc
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return thread
