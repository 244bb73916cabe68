"""What the HTTP API asks of a running worker, answered from its Faust runtime.

`WorkerService` fits the `ClipService` protocol of api/views.py without importing it: the views
see records and ClipGuard's own errors (QueueUnavailable), never a Kafka exception.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiokafka.errors import KafkaError

from streams.app import Runtime, partition_of
from streams.codec import REQUEST, RESULT
from streams.errors import QueueUnavailable
from streams.health import BrokerMonitor
from streams.records import ClassificationResult, ClipRequest
from streams.settings import Settings
from streams.topics import RESULT_TABLE, Topic
from streams.tracing import Tracing

log = logging.getLogger(__name__)

SUBMIT_TIMEOUT_S = 30.0


class WorkerService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.codec = runtime.codec

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def submit(self, request: ClipRequest, pending: ClassificationResult) -> None:
        """Publish the pending status, then the request; returns once Kafka has both.

        A 202 therefore means the clip is durably queued. With tracing on, the clip's trace
        starts here: both messages carry its context in their headers (streams/tracing.py).
        """
        key = request["id"].encode()
        messages = (
            (Topic.PROGRESS, self.codec.serialize(RESULT, pending)),
            (Topic.REQUESTS, self.codec.serialize(REQUEST, request)),
        )
        # Runtime.tracing (None: a runtime without one, as in tests).
        tracing: Tracing = getattr(self.runtime, "tracing", None) or Tracing()
        with tracing.submitting(request) as headers:
            extra: dict[str, Any] = {"headers": list(headers)} if headers else {}
            try:
                for topic, value in messages:
                    pending_send = await self.runtime.topics[topic].send(
                        key=key, value=value, **extra
                    )
                    await asyncio.wait_for(pending_send, timeout=SUBMIT_TIMEOUT_S)
            except (KafkaError, TimeoutError) as exc:
                raise QueueUnavailable(f"not queued: {exc!r}", clip_id=request["id"]) from exc

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

    def local(self, clip_id: str) -> ClassificationResult | None:
        key = clip_id.encode()
        if self.runtime.ledger.is_forgotten(partition_of(key, self.settings.partitions), key):
            return None  # past the retention, not yet deleted (recovered after a restart)
        value = self.runtime.table.get(key)
        return None if value is None else self.codec.parse(value, expect=RESULT)

    async def wait_local(self, clip_id: str, timeout: float) -> ClassificationResult | None:
        value = await self.runtime.wait_local(clip_id.encode(), timeout)
        return None if value is None else self.codec.parse(value, expect=RESULT)

    @property
    def http(self) -> Any:
        return self.runtime.app.http_client

    def readiness(self) -> dict[str, bool]:
        """What /ready reports; it answers 503 unless every check is true.

        `broker`: the worker's BrokerMonitor (streams/health.py) got an answer from Kafka lately;
        false from the second failed check of an outage until Kafka answers again. The consumer
        keeps its assignment through an outage, so `partitions_assigned` alone cannot tell.
        """
        app = self.runtime.app
        consumer_ready = bool(app.consumer and app.consumer.assignment())
        recovered = bool(app.tables and cast(Any, app.tables).recovery.completed.is_set())
        checks: dict[str, bool] = {}
        # Runtime.broker: the monitor streams/app.py runs (None: a runtime without one).
        monitor: BrokerMonitor | None = getattr(self.runtime, "broker", None)
        if monitor is not None:
            checks["broker"] = monitor.reachable
        checks["partitions_assigned"] = consumer_ready
        checks["table_recovered"] = recovered
        checks["model_loaded"] = self.runtime.model_loaded
        return checks
