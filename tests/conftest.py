"""Shared fixtures of the ClipGuard test suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from devtools import kafka_acl
from devtools.broker import Broker
from devtools.cluster import free_ports
from tests import kafka_io

# --- Kafka ------------------------------------------------------------------------------
# Tests that need Kafka are marked `@pytest.mark.kafka` and take `kafka_bootstrap`. The suite
# starts its own single-node broker (devtools/broker.py) once per session on free ports in a
# temporary directory, with SASL/SCRAM and ACLs as `make run` has it: the tests' own clients
# connect as the super user (tests/kafka_io.py), workers as the worker principal, which here may
# use every topic (each test has its own prefix). KAFKA_BOOTSTRAP=host:port points the tests at
# an existing PLAINTEXT cluster instead.
TENANTS = ("acme", "globex")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker | None]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield None
        return
    port, controller_port = free_ports(2)
    broker = Broker(tmp_path_factory.mktemp("kafka"), port=port, controller_port=controller_port)
    broker.start()
    try:
        kafka_acl.add_users(
            broker, [kafka_acl.WORKER, kafka_acl.ROUTER, *(kafka_acl.vms(t) for t in TENANTS)]
        )
        everything = (kafka_acl.AclOperation.ALL,)
        kafka_acl.grant(
            broker,
            [
                kafka_acl.Grant(kafka_acl.WORKER, kafka_acl.ResourceType.TOPIC, "*", everything),
                kafka_acl.Grant(kafka_acl.WORKER, kafka_acl.ResourceType.GROUP, "*", everything),
            ],
        )
        kafka_io.CLIENT.update(kafka_acl.aiokafka_options(broker))
        kafka_io.WORKER_SETTINGS.update(kafka_acl.worker_settings(broker))
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker | None) -> str:
    return os.environ["KAFKA_BOOTSTRAP"] if kafka_broker is None else kafka_broker.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test (or earlier run against the same cluster) uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
