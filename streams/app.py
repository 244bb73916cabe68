"""The Faust app: topics, the result table and three thin agents around streams/pipeline.py.

Every topic is keyed by the clip id (UTF-8 bytes, Kafka's default partitioner) and all have the
same partition count, so one clip's whole history stays on one partition and the worker that owns
partition p of the results table also consumes partition p of every other topic.
Values are raw bytes: the Avro codec runs inside the steps, so a message that does not parse
reaches the dead-letter topic instead of being dropped by Faust's own deserializer.

Each agent is the same loop (`_run_step`): consume, call its Kafka-free step, produce what the
step returns. No HTTP here: streams/wiring.py adds the API to this app's web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import murmur2
from faust.exceptions import ProducerSendError

from streams.admin import client_options
from streams.codec import RESULT, AvroCodec, default_codec
from streams.errors import CodecError, ErrorCode
from streams.fence import StallFence
from streams.health import BrokerMonitor
from streams.ledger import Ledger, deadline_outputs
from streams.logs import log_outcome
from streams.metrics import (
    REFRESH_S,
    Metrics,
    MetricsSensor,
    consumed_topics,
    record_output,
    refresh_consumer,
)
from streams.pipeline import (
    ClassifyStep,
    DecodeStep,
    Headers,
    Origin,
    Out,
    ResultsStep,
    dead_letter,
    undeliverable,
)
from streams.records import ClassificationResult
from streams.results import is_final
from streams.settings import Settings
from streams.stages.models import ModelPack
from streams.stages.policy import PolicyBook, load_policies
from streams.stages.pool import DecodePool, decode_to_jpeg
from streams.stages.uploads import UploadStore
from streams.topics import MAX_MESSAGE_BYTES, RESULT_TABLE, Topic, changelog_config, intake_topics
from streams.tracing import Tracing

log = logging.getLogger(__name__)

Step = Callable[[bytes, Origin], Awaitable[list[Out]]]
DEADLINE_CHECK_S = 2.0
FENCE_TICK_S = 0.5
# A deadline tick this late means the process did not run for a while: see answer_late_clips.
STALL_S = 5 * DEADLINE_CHECK_S


# Kafka's answers that no retry can change: the record, the topic or our rights are wrong.
PERMANENT_ERRORS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def is_permanent(exc: BaseException) -> bool:
    """Whether a failed send can never succeed (Faust wraps the client's error, or has none)."""
    root = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
    if isinstance(exc, ProducerSendError) and not isinstance(root, KafkaError):
        return True  # Faust refused it itself (e.g. over producer_max_request_size)
    return isinstance(root, PERMANENT_ERRORS)


class Undeliverable(Exception):
    def __init__(self, out: Out, cause: BaseException) -> None:
        super().__init__(f"{out.topic} refused an output for good: {cause!r}")
        self.out, self.cause = out, cause


@dataclass
class Runtime:
    """What the agents and the HTTP service share in one worker process."""

    settings: Settings
    app: faust.App
    codec: AvroCodec
    topics: dict[Topic, faust.TopicT]
    table: Any
    ledger: Ledger
    decode_step: DecodeStep | None = None
    classify_step: ClassifyStep | None = None
    model_loaded: bool = False
    last_deadline_check: float | None = None
    fence: StallFence = field(default_factory=lambda: StallFence(float("inf")))
    # Whether Kafka answers (streams/health.py): /ready's broker check, the quiet outage log.
    broker: BrokerMonitor | None = None
    waiters: dict[bytes, list[asyncio.Future[bytes]]] = field(default_factory=dict)
    # The worker's Prometheus metrics (streams/metrics.py; served apart, streams/wiring.py).
    metrics: Metrics = field(default_factory=Metrics)
    # OpenTelemetry traces (streams/tracing.py): off unless streams/wiring.py sets them up.
    tracing: Tracing = field(default_factory=Tracing)

    async def send(self, outs: list[Out]) -> None:
        """Produce `outs` and wait until Kafka has them, retrying while it is unreachable.

        Faust acks the input message once the agent moves on, so an output lost here would be
        a clip lost for good: block this agent instead, until the broker takes it. What can
        never succeed (a record too large, a topic we may not write) raises Undeliverable.
        """
        for out in outs:
            delay = 0.5
            while True:
                try:
                    pending = await self.topics[out.topic].send(
                        key=out.key, value=out.value, headers=list(out.headers) or None
                    )
                    await pending
                    record_output(self.metrics, self.codec, out, time.time())
                    break
                except (KafkaError, ProducerSendError) as exc:
                    if is_permanent(exc):
                        raise Undeliverable(out, exc) from exc
                    log.warning(
                        "sending to %s failed (%s); retrying in %.1f s", out.topic, exc, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)

    def notify(self, key: bytes, value: bytes) -> None:
        for future in self.waiters.pop(key, []):
            if not future.done():
                future.set_result(value)

    async def wait_local(self, key: bytes, timeout: float) -> bytes | None:
        current = self.table.get(key)
        if current is not None and is_final(self.codec.parse(current, expect=RESULT)):
            return bytes(current)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(key, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            waiting = self.waiters.get(key, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self.waiters.pop(key, None)


def create_app(settings: Settings) -> faust.App:
    """The pipeline of one worker: Faust app, topics, result table, agents, lifecycle."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_bind or settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=True,
        # Faust's own views would serve every tenant's table entries and the cluster's layout
        # without a key; ClipGuard serves only its own routes (api/errors.py allow-list).
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        table_standby_replicas=0,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_s,
        # A decoded clip of max_frames JPEG frames can pass Kafka's default 1 MB.
        producer_max_request_size=MAX_MESSAGE_BYTES,
    )
    topics = {name: _raw_topic(app, settings, settings.topic(name)) for name in Topic}
    table = app.Table(
        RESULT_TABLE,
        partitions=settings.partitions,
        extra_topic_configs=changelog_config(settings),
        key_type=bytes,  # bytes means the "raw" serializer: the same key bytes as the topics
        value_type=bytes,
    )
    ledger = Ledger(settings.clip_deadline_s, settings.result_retention_s)
    monitor = BrokerMonitor(
        settings,
        interval_s=settings.kafka_check_interval_s,
        timeout_s=settings.kafka_check_timeout_s,
        summary_every_s=settings.kafka_outage_summary_s,
    )
    runtime = Runtime(settings, app, default_codec(), topics, table, ledger, broker=monitor)
    runtime.fence = StallFence(settings.kafka_session_timeout_s)
    app.clipguard = runtime  # type: ignore[attr-defined]
    runtime.metrics.watch_kafka(lambda: monitor.reachable)
    app.sensors.add(MetricsSensor(runtime.metrics, consumed_topics(settings)))
    # Read now, so a wrong policy file stops the worker before it joins the group.
    policies = load_policies(settings.policy_file)
    _add_lifecycle(app, runtime, policies)
    _add_agents(app, runtime)
    return app


def _credentials(settings: Settings) -> faust.SASLCredentials | None:
    options = client_options(settings)  # checks the settings first
    if options["security_protocol"] == "PLAINTEXT":
        return None
    return faust.SASLCredentials(
        username=settings.kafka_username,
        password=settings.kafka_password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=options.get("ssl_context"),
    )


def runtime_of(app: faust.App) -> Runtime:
    runtime: Runtime = app.clipguard  # type: ignore[attr-defined]
    return runtime


def _raw_topic(app: faust.App, settings: Settings, *names: str) -> faust.TopicT:
    return app.topic(
        *names,
        partitions=settings.partitions,
        replicas=settings.replication_factor,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


def _add_lifecycle(app: faust.App, runtime: Runtime, policies: PolicyBook) -> None:
    inference = ThreadPoolExecutor(
        max_workers=max(1, runtime.settings.classify_workers), thread_name_prefix="clipguard-infer"
    )
    pools: list[DecodePool] = []
    uploads = UploadStore(runtime.settings.upload_dir)

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _watch_broker() -> None:
        # Runs until the app stops; installs the client-log filter while it runs.
        if runtime.broker is not None:
            await runtime.broker.run()

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _start_stages() -> None:
        settings, metrics = runtime.settings, runtime.metrics
        pool = DecodePool(
            settings, decode_fn=decode_to_jpeg, on_restart=metrics.decode_child_restarted
        )
        pools.append(pool)
        metrics.watch_decode_pool(lambda: pool.busy, pool.size)
        runtime.decode_step = DecodeStep(
            settings,
            runtime.codec,
            pool,
            uploads,
            intake_topics(settings),
            on_request=lambda request: metrics.clip_received(request["tenant"]),
        )
        loop = asyncio.get_running_loop()
        pack = await loop.run_in_executor(
            inference, ModelPack.load, settings.models_dir, settings.inference_threads
        )
        runtime.classify_step = ClassifyStep(runtime.codec, pack, policies, inference)
        runtime.model_loaded = True
        metrics.model_pack_loaded(pack.name, pack.version)
        log.info("model pack %s %s loaded", pack.name, pack.version)

    @app.timer(interval=3600.0)  # type: ignore[untyped-decorator]
    async def _prune_uploads() -> None:
        retention = runtime.settings.result_retention_s
        await asyncio.get_running_loop().run_in_executor(None, uploads.prune, retention)

    @runtime.table.on_recover  # type: ignore[untyped-decorator]
    async def _rebuild_ledger() -> None:
        await rebuild_ledger(runtime)

    @app.timer(interval=FENCE_TICK_S)  # type: ignore[untyped-decorator]
    async def _tick_fence() -> None:
        runtime.fence.tick()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _open_fence(app: faust.App, *args: Any, **kwargs: Any) -> None:
        runtime.fence.partitions_assigned()

    @app.timer(interval=DEADLINE_CHECK_S)  # type: ignore[untyped-decorator]
    async def _answer_late_clips() -> None:
        await answer_late_clips(runtime)

    consumed = consumed_topics(runtime.settings)

    @app.timer(interval=REFRESH_S)  # type: ignore[untyped-decorator]
    async def _refresh_metrics() -> None:
        await refresh_consumer(runtime.metrics, app, consumed)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    def _shutdown(app: faust.App, **kwargs: Any) -> None:
        for pool in pools:
            pool.close()
        inference.shutdown(wait=False, cancel_futures=True)


def owned_partitions(runtime: Runtime) -> set[int]:
    """The result table's partitions this worker owns now (those of the results topic)."""
    consumer = runtime.app.consumer
    results = runtime.settings.topic(Topic.RESULTS)
    return {tp.partition for tp in consumer.assignment() if tp.topic == results}


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as the producers of every topic use it."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def rebuild_ledger(runtime: Runtime) -> None:
    """After a recovery, the ledger of the owned partitions is read from the recovered table."""
    owned = owned_partitions(runtime)
    items = [(bytes(k), bytes(v)) for k, v in runtime.table.items()]
    by_partition: dict[int, list[tuple[bytes, ClassificationResult]]] = {p: [] for p in owned}
    codec, count = runtime.codec, runtime.settings.partitions
    for key, value in items:
        partition = partition_of(key, count)
        if partition in by_partition:
            with contextlib.suppress(CodecError):  # not ours: the results agent dead-lettered it
                by_partition[partition].append((key, codec.parse(value, expect=RESULT)))
    now = time.time()
    runtime.ledger.forget(set(range(count)) - owned)
    for partition, records in by_partition.items():
        runtime.ledger.rebuild(partition, records, now)
    log.info(
        "ledger rebuilt for partitions %s: %d results, %d pending",
        sorted(owned),
        len(items),
        runtime.ledger.pending_count(),
    )


async def answer_late_clips(runtime: Runtime) -> None:
    """Give every clip past its deadline an error result (the results agent stores it).

    Only a worker sure of its partitions answers for them: never during a rebalance, and not
    right after this process was frozen or starved (a tick much later than planned, e.g. after
    a SIGSTOP past the session timeout): its partitions may belong to another worker by now,
    which is answering those clips. Then the pending clips' clocks start again instead.
    """
    app = runtime.app
    now, last = time.monotonic(), runtime.last_deadline_check
    runtime.last_deadline_check = now
    if not (app.tables and cast(Any, app.tables).recovery.completed.is_set()):
        return
    if getattr(app, "rebalancing", False) or runtime.fence.closed:
        return
    if last is not None and now - last > STALL_S:
        log.warning(
            "the deadline timer ran %.0f s late (frozen or starved?): pending clips get their "
            "deadline afresh, and this worker waits for the group to confirm its partitions",
            now - last - DEADLINE_CHECK_S,
        )
        runtime.ledger.restart_clocks(time.time())
        return
    settings = runtime.settings
    for partition, key in runtime.ledger.overdue(time.time(), owned_partitions(runtime)):
        value = runtime.table.get(key)
        if value is None:
            continue
        outs = deadline_outputs(
            runtime.codec,
            settings.topic(Topic.PROGRESS),
            partition,
            key,
            bytes(value),
            settings.clip_deadline_s,
        )
        if outs:
            log.warning(
                "clip %s: no final result within %.0f s",
                key.decode(errors="replace"),
                settings.clip_deadline_s,
            )
            await runtime.send(outs)
            log_outcome(runtime.codec, outs)


async def _wait_for(ready: Callable[[], Step | None]) -> Step:
    while (value := ready()) is None:
        await asyncio.sleep(0.05)
    return value


def _origin(event: faust.EventT[bytes]) -> Origin:
    message = event.message
    headers = _headers(message.headers)
    return Origin(message.topic, message.partition, message.offset, message.key, headers)


def _headers(
    raw: Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
) -> Headers:
    """A record's headers as (name, bytes) pairs: aiokafka gives pairs, Faust may give a
    mapping, and Kafka allows a header without a value (None)."""
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(name), bytes(value or b"")) for name, value in pairs)


async def _run_step(
    runtime: Runtime,
    stream: faust.StreamT[bytes],
    step_of: Callable[[], Step | None],
    stage: str,
) -> AsyncIterator[None]:
    """The loop of every agent: consume, call the step, produce its outputs.

    With tracing on, the step runs in a span `clipguard.<stage>` whose context its outputs
    carry in their headers (streams/tracing.py); off, the step is called as it is.
    """
    step = runtime.tracing.traced(stage, await _wait_for(step_of), runtime.codec)
    async for event in stream.events():
        origin = _origin(event)
        try:
            outs = await step(event.value, origin)
        except Exception:  # a bug of ours: keep the worker alive, keep the message
            log.exception("unexpected failure at %s; message sent to dead letters", origin)
            outs = [
                dead_letter(
                    runtime.codec,
                    origin,
                    event.value,
                    stage="internal",
                    code=ErrorCode.INTERNAL,
                    message="internal error; see logs",
                    clip_id=None,
                )
            ]
        await _deliver(runtime, outs, event.value, origin)
        yield None


async def _deliver(runtime: Runtime, outs: list[Out], value: bytes, origin: Origin) -> None:
    """Send a step's outputs; one Kafka refuses for good is answered as an error instead."""
    try:
        await runtime.send(outs)
        log_outcome(runtime.codec, outs)  # one clip_outcome line per result sent
    except Undeliverable as exc:
        log.error("%s: %s; the clip gets an error result", origin, exc)
        fallback = undeliverable(runtime.codec, origin, value, exc.out, repr(exc.cause)[:300])
        try:
            await runtime.send(fallback)
            log_outcome(runtime.codec, fallback)
        except Undeliverable as again:  # even the error could not be written: say so loudly
            log.error("%s: the error result was refused too (%s); input dropped", origin, again)


def _add_agents(app: faust.App, runtime: Runtime) -> None:
    settings, topics = runtime.settings, runtime.topics

    # The requests topic (written by the HTTP API, i.e. the worker) and each tenant's intake.
    requests = _raw_topic(app, settings, settings.topic(Topic.REQUESTS), *intake_topics(settings))

    @app.agent(requests, concurrency=max(1, settings.decode_workers), name="clipguard.decode")
    async def decode_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in _run_step(runtime, stream, lambda: runtime.decode_step, "decode"):
            yield None

    @app.agent(
        topics[Topic.DECODED],
        concurrency=max(1, settings.classify_workers),
        name="clipguard.classify",
    )
    async def classify_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in _run_step(runtime, stream, lambda: runtime.classify_step, "classify"):
            yield None

    results_step = ResultsStep(
        runtime.codec,
        runtime.table,
        runtime.ledger,
        runtime.notify,
        may_write=runtime.fence.may_write,
    )
    results_and_progress = _raw_topic(
        app, settings, settings.topic(Topic.RESULTS), settings.topic(Topic.PROGRESS)
    )

    # The only writer of the result table (Faust allows table writes from one agent instance).
    @app.agent(results_and_progress, concurrency=1, name="clipguard.results")
    async def results_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in _run_step(runtime, stream, lambda: results_step, "results"):
            yield None
