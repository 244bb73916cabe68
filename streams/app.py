"""The Faust app: topics, the result table and thin agents around streams/pipeline.py.

Every topic is keyed by the clip id (UTF-8 bytes, Kafka's default partitioner) and all have the
same partition count, so one clip's whole history stays on one partition and the worker that owns
partition p of the results table also consumes partition p of every other topic.
Values are raw bytes: the Avro codec runs inside the steps, so a message that does not decode
reaches the dead-letter topic instead of being dropped by Faust's own deserializer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError

from api.uploads import prune_uploads
from api.views import install
from streams.codec import REQUEST, RESULT, AvroCodec, Record, default_codec
from streams.errors import CodecError, ErrorCode
from streams.pipeline import (
    DEAD_LETTER_TOPIC,
    DECODED_TOPIC,
    PROGRESS_TOPIC,
    RESULTS_TOPIC,
    ClassifyStep,
    DecodeStep,
    Expiry,
    Origin,
    Out,
    dead_letter,
    malformed,
    should_store,
)
from streams.results import is_final
from streams.settings import Settings
from streams.stages.models import ModelPack
from streams.stages.policy import load_policies
from streams.stages.pool import DecodePool, decode_to_jpeg
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

TOPIC_NAMES = ("requests", DECODED_TOPIC, RESULTS_TOPIC, PROGRESS_TOPIC, DEAD_LETTER_TOPIC)
RESULT_TABLE = "results"


@dataclass
class Runtime:
    """What the agents and views share in one worker process, started in app lifecycle hooks."""

    settings: Settings
    app: faust.App
    codec: AvroCodec
    topics: dict[str, faust.TopicT]
    table: Any
    decode_step: DecodeStep | None = None
    classify_step: ClassifyStep | None = None
    model_loaded: bool = False
    waiters: dict[bytes, list[asyncio.Future[bytes]]] = field(default_factory=dict)

    async def send(self, outs: list[Out]) -> None:
        """Produce `outs` and wait until Kafka has them, retrying while it is unreachable.

        Faust acks the input message once the agent moves on, so an output lost here would be
        a clip lost for good: block this agent instead, until the broker takes it.
        """
        for out in outs:
            delay = 0.5
            while True:
                try:
                    pending = await self.topics[out.topic].send(key=out.key, value=out.value)
                    await pending
                    break
                except KafkaError as exc:
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
        if current is not None and is_final(self.codec.decode(current, expect=RESULT)):
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
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
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
        table_standby_replicas=0,
        # A decoded clip of max_frames JPEG frames can pass Kafka's default 1 MB.
        producer_max_request_size=MAX_MESSAGE_BYTES,
    )
    topics = {name: _raw_topic(app, settings, settings.topic(name)) for name in TOPIC_NAMES}
    table = app.Table(
        RESULT_TABLE,
        partitions=settings.partitions,
        extra_topic_configs={
            "cleanup.policy": "compact,delete",
            "retention.ms": str(int(settings.result_retention_s * 1000)),
        },
        key_type=bytes,  # bytes means the "raw" serializer: the same key bytes as the topics
        value_type=bytes,
    )
    runtime = Runtime(settings, app, default_codec(), topics, table)
    app.clipguard = runtime  # type: ignore[attr-defined]
    # Read now, so a wrong policy file stops the worker before it joins the group.
    policies = load_policies(settings.policy_file)
    _add_lifecycle(app, runtime, policies)
    _add_agents(app, runtime)
    web_app = cast(Any, app.web).web_app  # the aiohttp Application inside Faust's web driver
    install(web_app, FaustClipService(runtime), settings)
    return app


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


def _add_lifecycle(app: faust.App, runtime: Runtime, policies: Any) -> None:
    inference = ThreadPoolExecutor(
        max_workers=max(1, runtime.settings.classify_workers), thread_name_prefix="clipguard-infer"
    )
    pools: list[Any] = []

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _start_stages() -> None:
        settings = runtime.settings
        pool = DecodePool(settings, decode_fn=decode_to_jpeg)
        pools.append(pool)
        runtime.decode_step = DecodeStep(settings, runtime.codec, pool)
        loop = asyncio.get_running_loop()
        pack = await loop.run_in_executor(
            inference, ModelPack.load, settings.models_dir, settings.inference_threads
        )
        runtime.classify_step = ClassifyStep(runtime.codec, pack, policies, inference)
        runtime.model_loaded = True
        log.info("model pack %s %s loaded", pack.name, pack.version)

    @app.timer(interval=3600.0)  # type: ignore[untyped-decorator]
    async def _prune_uploads() -> None:
        settings = runtime.settings
        await asyncio.get_running_loop().run_in_executor(
            None, prune_uploads, settings.upload_dir, settings.result_retention_s
        )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    def _shutdown(app: faust.App, **kwargs: Any) -> None:
        for pool in pools:
            pool.close()
        inference.shutdown(wait=False, cancel_futures=True)


async def _wait_for(ready: Callable[[], Any]) -> Any:
    while (value := ready()) is None:
        await asyncio.sleep(0.05)
    return value


def _origin(event: faust.EventT[bytes]) -> Origin:
    message = event.message
    return Origin(message.topic, message.partition, message.offset, message.key)


def _add_agents(app: faust.App, runtime: Runtime) -> None:
    topics = runtime.topics

    async def run_step(
        stream: faust.StreamT[bytes],
        step_of: Callable[[], Callable[[bytes, Origin], Awaitable[list[Out]]] | None],
    ) -> AsyncIterator[None]:
        step = await _wait_for(step_of)
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
            await runtime.send(outs)
            yield None

    @app.agent(
        topics["requests"],
        concurrency=max(1, runtime.settings.decode_workers),
        name="clipguard.decode",
    )
    async def decode_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in run_step(stream, lambda: runtime.decode_step):
            yield None

    @app.agent(
        topics[DECODED_TOPIC],
        concurrency=max(1, runtime.settings.classify_workers),
        name="clipguard.classify",
    )
    async def classify_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in run_step(stream, lambda: runtime.classify_step):
            yield None

    expiry = Expiry(runtime.settings.result_retention_s)
    results_and_progress = _raw_topic(
        app,
        runtime.settings,
        runtime.settings.topic(RESULTS_TOPIC),
        runtime.settings.topic(PROGRESS_TOPIC),
    )

    # The only writer of the result table (Faust allows table writes from one agent instance).
    @app.agent(results_and_progress, concurrency=1, name="clipguard.results")
    async def results_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        table = runtime.table
        async for event in stream.events():
            key, value = event.key, event.value
            try:
                incoming = runtime.codec.decode(value, expect=RESULT)
            except CodecError as exc:
                letter = malformed(runtime.codec, _origin(event), value, "results", exc)
                await runtime.send([letter])
                continue
            current = table.get(key)
            current_record = None if current is None else runtime.codec.decode(current)
            if should_store(current_record, incoming):
                table[key] = value
                # Expired keys share this event's partition, so their deletions land in the
                # changelog partition Faust writes for this event.
                for old in expiry.note(event.message.partition, key, time.monotonic()):
                    table.pop(old, None)
            if is_final(incoming):
                runtime.notify(key, value)
            yield None


class FaustClipService:
    """What the HTTP API needs from the running worker (see api/views.py `ClipService`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def codec(self) -> AvroCodec:
        return self.runtime.codec

    async def submit(self, request: Record, pending: Record) -> None:
        """Publish the pending status, then the request; returns once Kafka has both.

        A 202 therefore means the clip is durably queued; a KafkaError reaches the view (503).
        """
        key = request["id"].encode()
        for topic, value in (
            (PROGRESS_TOPIC, self.codec.encode(RESULT, pending)),
            ("requests", self.codec.encode(REQUEST, request)),
        ):
            pending_send = await self.runtime.topics[topic].send(key=key, value=value)
            await asyncio.wait_for(pending_send, timeout=30)

    def owner_url(self, clip_id: str) -> str | None:
        """Base URL of the worker owning this id's table partition; None when it is this one."""
        app = self.runtime.app
        try:
            url = app.router.key_store(RESULT_TABLE, clip_id.encode())
        except Exception:  # assignment not known yet (rebalancing): answer locally
            return None
        if (url.host, url.port) == (app.conf.canonical_url.host, app.conf.canonical_url.port):
            return None
        return str(url).rstrip("/")

    def local(self, clip_id: str) -> Record | None:
        value = self.runtime.table.get(clip_id.encode())
        return None if value is None else self.codec.decode(value, expect=RESULT)

    async def wait_local(self, clip_id: str, timeout: float) -> Record | None:
        value = await self.runtime.wait_local(clip_id.encode(), timeout)
        return None if value is None else self.codec.decode(value, expect=RESULT)

    @property
    def http(self) -> Any:
        return self.runtime.app.http_client

    def readiness(self) -> dict[str, bool]:
        app = self.runtime.app
        consumer_ready = bool(app.consumer and app.consumer.assignment())
        recovered = bool(app.tables and cast(Any, app.tables).recovery.completed.is_set())
        return {
            "broker": consumer_ready,
            "table_recovered": recovered,
            "model_loaded": self.runtime.model_loaded,
        }
