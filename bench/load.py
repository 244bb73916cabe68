"""Load on the real pipeline: clip requests through Kafka, and sync calls to the HTTP API.

Latency is measured from the moment a request is handed to the producer (for paced loads:
the moment it was scheduled, so a late producer does not hide queueing) to the moment its
final result is read back from the results topic by one consumer that runs for the whole
benchmark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.codec import REQUEST, RESULT, default_codec
from streams.records import ClipRequest
from streams.results import iso_timestamp, new_clip_id

codec = default_codec()


def clip_request(uri: str, tenant: str = "bench") -> ClipRequest:
    return {
        "id": new_clip_id(),
        "tenant": tenant,
        "camera_id": "bench-cam",
        "parent_id": "0" * 24,
        "analyse_id": 1,
        "video_uri": uri,
        "videoname": "",
        "filesize": None,
        "metadata": {},
        "created_at": iso_timestamp(),
    }


@dataclass
class Arrival:
    at: float  # time.monotonic() when the consumer got it
    ok: bool
    timing: dict[str, float] = field(default_factory=dict)  # the worker's own stage ms
    error: str = ""


class ResultWatcher:
    """One consumer on the results topic: for each clip id, when its final result arrived."""

    def __init__(self, bootstrap: str, topic: str, client: Mapping[str, Any] | None = None) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **(client or {}),
        )
        self.arrived: dict[bytes, Arrival] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for messages in batches.values():
                for message in messages:
                    if message.key is None or message.key in self.arrived:
                        continue  # at-least-once: a replayed result is not a second arrival
                    self.arrived[message.key] = _arrival(now, message.value)
            if batches:
                self._changed.set()

    async def wait_for(
        self, keys: Sequence[bytes], timeout_s: float, progress: Callable[[int], None]
    ) -> None:
        """Until every key has arrived, or the timeout; missing keys are the caller's to count."""
        deadline = time.monotonic() + timeout_s
        wanted = set(keys)
        while True:
            done = len(wanted & self.arrived.keys())
            progress(done)
            if done == len(wanted) or time.monotonic() >= deadline:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass


def _arrival(now: float, value: bytes) -> Arrival:
    try:
        record = codec.parse(value, expect=RESULT)
    except Exception as exc:  # counted as a failed clip, never silently dropped
        return Arrival(now, False, error=f"undecodable result: {exc}")
    ok = record["status"]["classify"] == "done"
    return Arrival(
        now, ok, dict(record.get("timing") or {}), "" if ok else str(record.get("error_msg"))
    )


class Requester:
    """Produces clip requests; `sent` maps each clip id to its send (or scheduled) time."""

    def __init__(self, bootstrap: str, topic: str, client: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=0, **(client or {})
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def burst(self, uris: Sequence[str]) -> dict[bytes, float]:
        """Every request at once (saturation)."""
        sent = {}
        deliveries = []
        for uri in uris:
            request = clip_request(uri)
            key = request["id"].encode()
            sent[key] = time.monotonic()
            deliveries.append(
                await self._producer.send(self.topic, codec.serialize(REQUEST, request), key=key)
            )
        await asyncio.gather(*deliveries)
        return sent

    async def paced(
        self, uris: Sequence[str], rate: float, progress: Callable[[int], None]
    ) -> dict[bytes, float]:
        """One request every 1/rate seconds (an open loop: the worker's pace changes nothing)."""
        sent = {}
        deliveries = []
        start = time.monotonic()
        for index, uri in enumerate(uris):
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            request = clip_request(uri)
            key = request["id"].encode()
            sent[key] = scheduled
            deliveries.append(
                await self._producer.send(self.topic, codec.serialize(REQUEST, request), key=key)
            )
            progress(index + 1)
        await asyncio.gather(*deliveries)
        return sent


def outcome(sent: dict[bytes, float], arrived: dict[bytes, Arrival]) -> dict[str, Any]:
    """Latencies (ms), throughput and failures of one batch of requests."""
    got = {k: arrived[k] for k in sent if k in arrived}
    latencies = [(got[k].at - sent[k]) * 1000.0 for k in got]
    # Time outside the worker's own stages: Kafka hops, Avro, Faust, waiting in a queue.
    outside = [(got[k].at - sent[k]) * 1000.0 - got[k].timing.get("total", 0.0) for k in got]
    first = min(sent.values())
    last = max((a.at for a in got.values()), default=float("nan"))
    stage_ms: dict[str, list[float]] = {}
    for arrival in got.values():
        for stage, ms in arrival.timing.items():
            stage_ms.setdefault(stage, []).append(ms)
    return {
        "requests": len(sent),
        "results": len(got),
        "missing": len(sent) - len(got),
        "errors": [a.error for a in got.values() if not a.ok][:5],
        "error_count": sum(1 for a in got.values() if not a.ok),
        "span_s": last - first,
        "clips_per_s": len(got) / (last - first) if got and last > first else float("nan"),
        "latencies_ms": latencies,
        "outside_stages_ms": outside,
        "worker_stage_ms": stage_ms,
    }


# ---------------------------------------------------------------- the HTTP API


async def sync_clients(
    base_url: str,
    key: str,
    clip: Path,
    clients: int,
    requests_each: int,
    progress: Callable[[int], None],
    timeout_s: float,
) -> dict[str, Any]:
    """`clients` concurrent callers, each sending `requests_each` sync classify calls in turn."""
    data = clip.read_bytes()
    latencies: list[float] = []
    stage_totals: list[float] = []  # the worker's own fetch+decode+encode+classify ms
    failures: list[str] = []
    url = f"{base_url}/api/classify?sync=true"
    headers = {"Authorization": f"Bearer {key}"}

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(requests_each):
            form = aiohttp.FormData()
            form.add_field("video", data, filename=clip.name, content_type="video/mp4")
            start = time.monotonic()
            try:
                async with session.post(url, data=form, headers=headers) as response:
                    body = await response.json()
                    elapsed = (time.monotonic() - start) * 1000.0
                    if response.status == 200 and body.get("status", {}).get("classify") == "done":
                        latencies.append(elapsed)
                        stage_totals.append(float(body.get("duration", 0)) / 1000.0)
                    else:
                        failures.append(f"HTTP {response.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            progress(len(latencies) + len(failures))

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=clients)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    wall = time.monotonic() - started
    return {
        "clients": clients,
        "requests": clients * requests_each,
        "latencies_ms": latencies,
        "stage_total_ms": stage_totals,
        "failures": failures[:5],
        "failure_count": len(failures),
        "wall_s": wall,
        "clips_per_s": len(latencies) / wall if wall else float("nan"),
    }
