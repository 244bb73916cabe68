"""The real Apache Kafka broker that streams/broker.py starts: clients can use it, its data
outlives a restart, and a start that cannot work says why."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError

from devtools.broker import Broker, cli, probe_metadata
from devtools.cluster import free_ports
from devtools.kafka_acl import aiokafka_options
from streams.errors import BrokerError
from tests.kafka_io import CLIENT

pytestmark = pytest.mark.kafka

needs_java = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None,
    reason="starting a broker needs java and mvn on PATH",
)


async def create_topic(
    bootstrap: str, name: str, partitions: int = 1, client: dict | None = None
) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, **(CLIENT if client is None else client)
    )
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, key: bytes, value: bytes, client: dict | None = None
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", **(CLIENT if client is None else client)
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def consume_all(
    bootstrap: str, topic: str, group: str, client: dict | None = None
) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **(CLIENT if client is None else client),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        # getmany() may return nothing before the group's first assignment; wait for records.
        records: list[tuple[bytes, bytes]] = []
        for _ in range(20):
            batches = await consumer.getmany(timeout_ms=1000)
            records += [(r.key, r.value) for batch in batches.values() for r in batch]
            if records:
                await consumer.commit()
                return records
        return records
    finally:
        await consumer.stop()


async def test_a_created_topic_carries_a_message_to_a_consumer_group(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.clips"
    await create_topic(kafka_bootstrap, topic, partitions=2)

    await produce(kafka_bootstrap, topic, b"clip-1", b"\x00payload\xff")

    assert await consume_all(kafka_bootstrap, topic, f"{topic_prefix}.group") == [
        (b"clip-1", b"\x00payload\xff")
    ]


async def test_the_broker_refuses_to_create_topics_on_first_use(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # auto.create.topics.enable=false: a producer with a typo in a topic name gets an error
    # instead of silently writing to a new one-partition topic.
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        request_timeout_ms=3000,
        metadata_max_age_ms=1000,
        **CLIENT,
    )
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(f"{topic_prefix}.typo", b"x")
    finally:
        await producer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, **CLIENT)
    await admin.start()
    try:
        assert f"{topic_prefix}.typo" not in await admin.list_topics()
    finally:
        await admin.close()


@needs_java
async def test_messages_survive_a_stop_and_start(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    broker = Broker(tmp_path / "kafka", port=port, controller_port=controller_port)
    try:
        bootstrap = broker.start()
        client = aiokafka_options(broker)
        cluster_id = probe_metadata("127.0.0.1", port, plain=("admin", broker.admin_password))
        await create_topic(bootstrap, "kept", client=client)
        await produce(bootstrap, "kept", b"k", b"still here", client=client)

        assert broker.stop() is True
        assert not broker.status().running

        assert broker.start() == bootstrap
        status = broker.status()
        assert status.ready and status.cluster_id == cluster_id
        assert await consume_all(bootstrap, "kept", "after-restart", client) == [
            (b"k", b"still here")
        ]
        # Starting again while it runs reuses the running broker.
        assert broker.start() == bootstrap
        assert broker.status().pid == status.pid
    finally:
        broker.stop()
    assert not broker.status().running


@needs_java
def test_a_busy_port_is_reported_before_java_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = Broker(tmp_path / "kafka", port=port, controller_port=free_ports(1)[0])

        with pytest.raises(BrokerError, match=f"port {port} .* in use"):
            broker.start()

    assert not (tmp_path / "kafka" / "broker.pid").exists()


@needs_java
def test_a_broker_that_dies_while_starting_shows_its_log(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    data_dir = tmp_path / "kafka"
    # Storage formatted for another node id: Kafka refuses to start on it.
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "meta.properties").write_text(
        "version=1\nnode.id=7\ncluster.id=AAAAAAAAAAAAAAAAAAAAAQ\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAg\n"
    )
    broker = Broker(data_dir, port=port, controller_port=controller_port)

    with pytest.raises(BrokerError, match=r"(?s)exited while starting.*Stored node id 7"):
        broker.start(timeout_s=60)

    assert not broker.status().running


def test_cli_status_of_a_data_dir_never_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["status", "--data-dir", str(tmp_path)]) == 3
    assert "stopped" in capsys.readouterr().out


@needs_java
def test_a_cluster_id_that_starts_with_a_dash_is_one_argument(tmp_path: Path, monkeypatch) -> None:
    """Found by CI: 1 in 64 random base64 ids starts with "-", which the storage tool read as an
    option ("argument --cluster-id: expected one argument") and the broker never started."""
    import devtools.broker as broker_module

    class DashFirst:
        bytes = b"\xfb" + b"\x00" * 15  # base64 "-w..." (urlsafe)

    monkeypatch.setattr(broker_module.uuid, "uuid4", lambda: DashFirst())
    port, controller_port = free_ports(2)
    broker = Broker(tmp_path / "kafka", port=port, controller_port=controller_port)
    try:
        broker.start()
        assert broker.status().cluster_id.startswith("-")
    finally:
        broker.stop()
