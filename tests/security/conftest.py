"""The security layer: each test is a finding of an outside tester, or a new case of one.

`pytest -m security` runs just these. The HTTP tests use the real aiohttp app over the
in-memory service of tests/test_api.py; tests/security/test_worker.py attacks a real worker.
"""

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from api.auth import add_key
from tests import kafka_io
from tests.workers import Worker, running, worker_env


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.security)


@pytest.fixture(scope="package")
def worker(kafka_bootstrap, kafka_broker, tmp_path_factory):
    """One real worker for the package, as shipped (no http allow-list), taking clip requests
    from the Kafka intake topics of acme and globex, with a decoded topic too small for any
    decoded clip."""
    workdir = tmp_path_factory.mktemp("attacked")
    keys = {t: add_key(workdir / "keys.json", t) for t in ("acme", "globex")}
    prefix = f"sec-{uuid.uuid4().hex[:10]}"
    asyncio.run(_small_decoded_topic(kafka_bootstrap, f"{prefix}.decoded"))
    env = worker_env(kafka_bootstrap, prefix, workdir, "w1", kafka_tenants="acme,globex")
    process = Worker(env, workdir / "w1.log")
    with running(process):
        yield {
            "url": process.url,
            "keys": keys,
            "prefix": prefix,
            "bootstrap": kafka_bootstrap,
            "broker": kafka_broker,
            "process": process,
        }


async def _small_decoded_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_io.CLIENT)
    await admin.start()
    try:
        topic = NewTopic(name, 4, 1, topic_configs={"max.message.bytes": "20000"})
        await admin.create_topics([topic])
    finally:
        await admin.close()
