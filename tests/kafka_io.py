"""Small aiokafka helpers for end-to-end tests: produce clip requests, collect records by key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.codec import REQUEST, default_codec
from streams.records import ClipRequest
from streams.results import iso_timestamp, new_clip_id

# How the tests' own clients connect (the super user of the suite's broker; tests/conftest.py
# fills these in), and the CLIPGUARD_KAFKA_* settings of the workers they start.
CLIENT: dict[str, Any] = {}
WORKER_SETTINGS: dict[str, str] = {"CLIPGUARD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}


def clip_request(uri: str, tenant: str = "acme", **changes: object) -> ClipRequest:
    record: ClipRequest = {
        "id": new_clip_id(),
        "tenant": tenant,
        "camera_id": "cam-1",
        "parent_id": "0" * 24,
        "analyse_id": 7,
        "video_uri": uri,
        "videoname": "",
        "filesize": None,
        "metadata": {"site": "north"},
        "created_at": iso_timestamp(),
    }
    record.update(changes)
    return record


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **CLIENT)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def produce_requests(bootstrap: str, topic: str, requests: Iterable[ClipRequest]) -> None:
    codec = default_codec()
    await produce(
        bootstrap, topic, ((r["id"].encode(), codec.serialize(REQUEST, r)) for r in requests)
    )


async def collect(
    bootstrap: str, topic: str, keys: set[bytes], timeout_s: float = 240
) -> dict[bytes, list[bytes]]:
    """Every message of `topic` whose key is in `keys`, until each key was seen once."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **CLIENT,
    )
    await consumer.start()
    found: dict[bytes, list[bytes]] = {}
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while set(found) < keys or not keys:
            if asyncio.get_running_loop().time() > deadline:
                break
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    if message.key in keys:
                        found.setdefault(message.key, []).append(message.value)
            if not keys:
                break
    finally:
        await consumer.stop()
    return found
