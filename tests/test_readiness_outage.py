"""A Kafka outage as a real worker lives it: /ready says 503 while the broker is away, and the
log tells the outage in a few lines instead of ~100 client errors a second.

The outage test stops and restarts a broker of its own (plaintext, free ports, in tmp_path), so
it needs Java and Maven even when KAFKA_BOOTSTRAP names an existing cluster; the monitor's check
with the worker's SASL credentials runs against the suite's broker.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.auth import add_key
from devtools.broker import Broker
from devtools.cluster import free_ports, worker_env
from streams.health import BrokerMonitor
from streams.settings import Settings
from tests import kafka_io
from tests.workers import Worker, running

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

needs_java = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None,
    reason="starting a broker needs java and mvn on PATH",
)

SUMMARY_EVERY_S = 5  # the worker's CLIPGUARD_KAFKA_OUTAGE_SUMMARY_S here (default 30)
STARTED, SUMMARY, ENDED = "unreachable since", "unreachable for", "reachable again after"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    port, controller_port = free_ports(2)
    broker = Broker(tmp_path / "kafka", port=port, controller_port=controller_port, sasl=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def ready(worker: Worker) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{worker.url}/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(what: str, condition: Callable[[], bool], worker: Worker, timeout_s: float) -> float:
    """Seconds until `condition` holds, polling; fails with the worker's log tail past the timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} not within {timeout_s:.0f} s; worker log:\n{worker.log_tail(60)}")
        time.sleep(0.25)
    return time.monotonic() - started


def lines_from(path: Path, offset: int, end: int | None = None) -> list[str]:
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read() if end is None else log.read(end - offset)
    return data.decode(errors="replace").splitlines()


@needs_java
def test_ready_is_503_during_a_broker_outage_and_the_log_stays_quiet(own_broker, tmp_path):
    add_key(tmp_path / "keys.json", "acme")
    prefix = f"outage-{uuid.uuid4().hex[:10]}"
    env = worker_env(
        own_broker.bootstrap,
        prefix,
        tmp_path,
        "w1",
        {"CLIPGUARD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
    )
    env["CLIPGUARD_PARTITIONS"] = "2"
    env["CLIPGUARD_KAFKA_OUTAGE_SUMMARY_S"] = str(SUMMARY_EVERY_S)
    log_path = tmp_path / "w1.log"
    worker = Worker(env, log_path)
    with running(worker):  # /ready answered 200
        status, body = ready(worker)
        assert status == 200 and body["checks"]["broker"] is True

        outage_start = log_path.stat().st_size
        own_broker.stop()
        stopped = time.monotonic()
        wait_until("/ready 503", lambda: ready(worker)[0] == 503, worker, 60)
        detected_s = time.monotonic() - stopped
        status, body = ready(worker)
        assert status == 503 and body["checks"]["broker"] is False
        # Let the outage run into its first summary, then end it.
        wait_until(
            "a summary line",
            lambda: any(SUMMARY in line for line in lines_from(log_path, outage_start)),
            worker,
            60,
        )
        assert ready(worker)[0] == 503  # still down: no flapping back to 200
        outage_end = log_path.stat().st_size
        outage_s = time.monotonic() - stopped
        own_broker.start()
        wait_until("/ready 200 again", lambda: ready(worker)[0] == 200, worker, 120)
        wait_until(
            "the recovery line",
            lambda: any(ENDED in line for line in lines_from(log_path, outage_start)),
            worker,
            30,
        )
        after = lines_from(log_path, outage_start)

    during = lines_from(log_path, outage_start, outage_end)
    started = [line for line in during if STARTED in line]
    assert len(started) == 1, "\n".join(during[-60:])
    assert "[WARNING]" in started[0] and own_broker.bootstrap in started[0]
    assert during.index(started[0]) < 20, "the warning comes when the outage starts"
    summaries = [line for line in during if SUMMARY in line]
    assert 1 <= len(summaries) <= outage_s / SUMMARY_EVERY_S + 1
    assert "client errors suppressed" in summaries[0]
    errors = [line for line in during if "[ERROR]" in line]
    # Before: ~80-130 client ERROR lines a second per worker for the whole outage.
    shown = "\n".join(errors[:30])
    assert len(errors) <= 20, f"{len(errors)} ERROR lines in {outage_s:.0f} s:\n{shown}"
    ended = [line for line in after if ENDED in line]
    assert len(ended) == 1 and [line for line in after if STARTED in line] == started
    assert detected_s < 30


def worker_settings(bootstrap: str, **changes: str) -> Settings:
    environ = {**kafka_io.WORKER_SETTINGS, "CLIPGUARD_KAFKA_BOOTSTRAP": bootstrap}
    environ.update({f"CLIPGUARD_{k.upper()}": v for k, v in changes.items()})
    return Settings.from_env(environ)


async def test_the_monitor_is_answered_with_the_worker_credentials(kafka_bootstrap):
    monitor = BrokerMonitor(worker_settings(kafka_bootstrap), timeout_s=5)
    try:
        assert await monitor.check()
        assert await monitor.check()  # the kept client, a Metadata request for no topics
    finally:
        await monitor._close_client()
    assert monitor.reachable


async def test_a_refused_login_is_no_answer(kafka_bootstrap):
    if kafka_io.WORKER_SETTINGS.get("CLIPGUARD_KAFKA_SECURITY_PROTOCOL") == "PLAINTEXT":
        pytest.skip("the cluster takes no credentials")
    monitor = BrokerMonitor(
        worker_settings(kafka_bootstrap, kafka_password="not-the-password"), timeout_s=5
    )
    assert not await monitor.check()
