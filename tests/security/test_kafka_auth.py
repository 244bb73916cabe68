"""Finding: Kafka had no trust boundary. The broker listened in PLAINTEXT, and any producer on
the requests topic could claim any tenant and any id. Now the broker (the project's own, with
SASL/SCRAM and the StandardAuthorizer) lets a VMS write only its tenant's intake topic, the
worker checks that a request there names that tenant, and an alarm router may only read results.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from devtools import kafka_acl
from streams.codec import DEAD_LETTER, REQUEST, RESULT, default_codec
from streams.errors import ErrorCode
from tests.kafka_io import clip_request, collect

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
codec = default_codec()


@pytest.fixture(scope="module")
def granted(worker):
    broker = worker["broker"]
    if broker is None:
        pytest.skip("KAFKA_BOOTSTRAP names an existing cluster: its ACLs are not ours to set")
    prefix = worker["prefix"]
    kafka_acl.grant(broker, kafka_acl.vms_grants(prefix, "acme") + kafka_acl.router_grants(prefix))
    return worker


async def send_as(broker, user, topic, key, value):
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        request_timeout_ms=5000,
        **kafka_acl.aiokafka_options(broker, user),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def request_bytes(**changes):
    request = clip_request("https://cams.example.com/alarm.mp4", **changes)
    return request, codec.serialize(REQUEST, request)


def test_a_client_without_credentials_gets_nothing(granted):
    async def plaintext():
        producer = AIOKafkaProducer(bootstrap_servers=granted["bootstrap"], request_timeout_ms=3000)
        await producer.start()
        await producer.stop()

    with pytest.raises((KafkaError, OSError, asyncio.TimeoutError)):
        asyncio.run(asyncio.wait_for(plaintext(), 20))


def test_a_vms_writes_its_tenants_intake_and_the_clip_is_answered(granted):
    broker, prefix = granted["broker"], granted["prefix"]
    request, value = request_bytes(tenant="acme")
    key = request["id"].encode()
    asyncio.run(send_as(broker, "vms-acme", f"{prefix}.intake.acme", key, value))
    results = asyncio.run(collect(granted["bootstrap"], f"{prefix}.results", {key}))
    result = codec.parse(results[key][-1], expect=RESULT)
    assert result["tenant"] == "acme" and result["status"]["classify"] == "error"
    # (the URL is not reachable from here: an answer, with its own error, is what counts)
    assert result["error_code"] in (ErrorCode.SOURCE_FORBIDDEN, ErrorCode.FETCH_FAILED)


@pytest.mark.parametrize("target", ["intake.globex", "requests", "results", "progress"])
def test_a_vms_cannot_write_another_tenants_topic_or_the_workers(granted, target):
    broker, prefix = granted["broker"], granted["prefix"]
    request, value = request_bytes(tenant="globex")
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(
            send_as(broker, "vms-acme", f"{prefix}.{target}", request["id"].encode(), value)
        )


def test_a_vms_claiming_another_tenant_on_its_own_topic_gets_a_dead_letter_only(granted):
    broker, prefix = granted["broker"], granted["prefix"]
    request, value = request_bytes(tenant="globex")
    key = request["id"].encode()
    asyncio.run(send_as(broker, "vms-acme", f"{prefix}.intake.acme", key, value))
    letters = asyncio.run(collect(granted["bootstrap"], f"{prefix}.deadletter", {key}))
    letter = codec.parse(letters[key][0], expect=DEAD_LETTER)
    assert letter["stage"] == "intake" and "names tenant globex" in letter["error_msg"]
    assert letter["error_code"] == ErrorCode.MALFORMED_MESSAGE
    assert asyncio.run(collect(granted["bootstrap"], f"{prefix}.results", {key}, 5)) == {}


def test_an_alarm_router_reads_results_and_nothing_else(granted):
    broker, prefix = granted["broker"], granted["prefix"]

    async def read(topic):
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id="router-test",
            auto_offset_reset="earliest",
            **kafka_acl.aiokafka_options(broker, kafka_acl.ROUTER),
        )
        await consumer.start()
        try:
            return await consumer.getmany(timeout_ms=3000)
        finally:
            await consumer.stop()

    asyncio.run(read(f"{prefix}.results"))  # allowed: no error
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(read(f"{prefix}.requests"))
    request, value = request_bytes(tenant="acme")
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(
            send_as(broker, kafka_acl.ROUTER, f"{prefix}.results", request["id"].encode(), value)
        )
