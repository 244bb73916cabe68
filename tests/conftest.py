"""Shared fixtures of the ClipGuard test suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from devtools.broker import Broker
from devtools.cluster import free_ports

# --- Kafka ------------------------------------------------------------------------------
# Tests that need Kafka are marked `@pytest.mark.kafka` and take `kafka_bootstrap`. The suite
# starts its own single-node broker (streams/broker.py) once per session on free ports in a
# temporary directory; KAFKA_BOOTSTRAP=host:port points the tests at an existing cluster instead.


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    port, controller_port = free_ports(2)
    broker = Broker(tmp_path_factory.mktemp("kafka"), port=port, controller_port=controller_port)
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test (or earlier run against the same cluster) uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
