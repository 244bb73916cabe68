"""Kafka's reachability as a worker sees it (streams/health.py), without a broker: the outage
log's lines on a fake clock, the client-log filter on real LogRecords, the monitor's loop on a
fake probe (and the real one against a closed port), and /ready's broker check."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, TopicAuthorizationFailedError

from devtools.cluster import free_ports
from streams.health import (
    BrokerMonitor,
    ClientErrorFilter,
    OutageLog,
    State,
    is_connection_failure,
)
from streams.service import WorkerService
from streams.settings import Settings

START = datetime(2026, 12, 2, 1, 38, 0).timestamp()


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    msg: str = "Unable connect to node with id %s: %s",
    args: tuple[object, ...] = (1, KafkaConnectionError("Connect call failed")),
    level: int = logging.ERROR,
    name: str = "aiokafka.client",
    exc: BaseException | None = None,
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "streams.health"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock: Clock) -> OutageLog:
    return OutageLog("kafka-1:9092", clock=clock)


# --- OutageLog ----------------------------------------------------------------------------


def test_one_failed_check_is_no_outage(outage, clock, caplog):
    outage.check_failed("no answer within 2 s")
    assert outage.reachable and outage.down_since is None
    clock.now += 2
    assert outage.check_passed() == []
    assert warnings_of(caplog) == []
    assert outage.state is State.UP


def test_an_outage_logs_one_warning_a_summary_every_30_s_and_one_line_at_its_end(
    outage, clock, caplog
):
    detail = "KafkaConnectionError: no bootstrap server of kafka-1:9092 answered"
    outage.check_failed(detail)
    clock.now += 2
    outage.check_failed(detail)
    assert not outage.reachable and outage.down_since == START
    (started,) = warnings_of(caplog)
    assert started.startswith("Kafka at kafka-1:9092 unreachable since 2026-12-02 01:38:00 (")
    assert detail in started and "/ready answers 503" in started

    for _ in range(4123):
        assert outage.client_error(record()) is True  # dropped, counted
    while clock.now < START + 94:  # a check every 2 s
        clock.now += 2
        outage.check_failed(detail)
    clock.now = START + 95
    assert outage.check_passed() == []
    lines = warnings_of(caplog)
    assert lines[1:] == [
        f"Kafka at kafka-1:9092 unreachable for 32 s; 4,123 client errors suppressed (last check: {detail})",
        f"Kafka at kafka-1:9092 unreachable for 62 s; 4,123 client errors suppressed (last check: {detail})",
        f"Kafka at kafka-1:9092 unreachable for 92 s; 4,123 client errors suppressed (last check: {detail})",
        "Kafka at kafka-1:9092 reachable again after 95 s; 4,123 client errors suppressed during the outage",
    ]
    assert outage.reachable and outage.down_since is None and outage.suppressed == 0


def test_long_outages_read_in_minutes_and_hours(outage, clock, caplog):
    outage.check_failed("x")
    clock.now += 2
    outage.check_failed("x")
    clock.now = START + 3 * 3600 + 125
    outage.check_passed()
    assert warnings_of(caplog)[-1].startswith(
        "Kafka at kafka-1:9092 reachable again after 3 h 02 min; "
    )


def test_a_client_error_makes_kafka_suspect_and_is_held_until_a_check_says(outage, clock):
    woken = []
    outage.on_suspect = lambda: woken.append(clock.now)
    first, second = record(), record(exc=NodeNotReadyError("node 1 not ready"))
    assert outage.client_error(first) is True
    assert outage.client_error(second) is True
    assert woken == [START]  # one early check asked for, not one per record
    assert outage.state is State.SUSPECT and outage.reachable  # /ready stays 200
    clock.now += 0.1
    assert outage.check_passed() == [first, second]  # a hiccup: logged after all
    assert outage.state is State.UP and woken == [START]
    third = record()
    assert outage.client_error(third) is True  # suspect again: the next check decides
    assert woken == [START, START + 0.1]
    clock.now += 0.5
    assert outage.check_passed() == [third]


def test_held_client_errors_count_as_suppressed_once_the_outage_is_declared(outage, clock, caplog):
    outage.client_error(record())
    clock.now += 0.01
    outage.check_failed("KafkaConnectionError: refused")
    clock.now += 2
    outage.check_failed("KafkaConnectionError: refused")
    assert outage.suppressed == 1 and outage.down_since == START
    (started,) = warnings_of(caplog)
    assert "first client error: Unable connect to node with id 1: KafkaConnectionError: " in started
    assert outage.release_held() == []


def test_past_max_held_records_are_counted_and_said_to_be_dropped(clock, caplog):
    outage = OutageLog("k:9092", clock=clock, max_held=3)
    for _ in range(5):
        outage.client_error(record())
    assert len(outage.check_passed()) == 3
    assert warnings_of(caplog) == [
        "2 further Kafka client errors were dropped while Kafka was checked"
    ]


def test_a_single_failure_is_declared_when_configured(clock, caplog):
    outage = OutageLog("k:9092", clock=clock, failures_to_declare=1)
    outage.check_failed("x")
    assert not outage.reachable and len(warnings_of(caplog)) == 1


# --- which records are about connection failures ----------------------------------------


@pytest.mark.parametrize(
    "rec",
    [
        record(),  # an exception argument
        record("Group Coordinator Request failed: %s", (NodeNotReadyError("node 1"),)),
        record("Unable to update metadata from %s", ([1],)),  # text only
        record("Marking the coordinator dead (node %s)for group %s.", (1, "g"), logging.WARNING),
        record("error in consumer iterator", (), exc=ConnectionResetError("peer")),
        record("[^--Producer]: send failed: %r", (TimeoutError(),), name="faust.producer"),
    ],
    ids=["exc-arg", "not-ready", "metadata", "coordinator-dead", "exc-info", "faust-timeout"],
)
def test_connection_failures_are_recognised(rec):
    assert is_connection_failure(rec)


@pytest.mark.parametrize(
    "rec",
    [
        record("Topic %s is not authorized for this client", ("clipguard.results",)),
        record("OffsetCommit failed: %s", (TopicAuthorizationFailedError(),)),
        record("%s %s", ("one argument too few",)),
    ],
    ids=["unauthorized-text", "unauthorized-exc", "bad-args"],
)
def test_other_client_errors_are_not_connection_failures(rec):
    assert not is_connection_failure(rec)


def test_the_filter_passes_everything_while_kafka_is_up_but_holds_connection_errors(outage):
    quiet = ClientErrorFilter(outage)
    assert quiet.filter(record("fetching %s", ("x",), logging.INFO))
    assert quiet.filter(record("Topic %s is not authorized for this client", ("t",)))
    assert quiet.filter(record(level=logging.CRITICAL))
    assert outage.state is State.UP
    assert not quiet.filter(record())  # suspect now: held
    assert outage.state is State.SUSPECT


def test_the_filter_drops_and_counts_connection_errors_during_an_outage(outage, clock):
    quiet = ClientErrorFilter(outage)
    outage.check_failed("x")
    clock.now += 2
    outage.check_failed("x")
    assert [quiet.filter(record()) for _ in range(3)] == [False] * 3
    assert quiet.filter(record(level=logging.INFO))  # not an error: logged
    assert quiet.filter(record("Topic %s is not authorized for this client", ("t",)))
    assert outage.suppressed == 3
    clock.now += 2
    outage.check_passed()
    assert quiet.filter(record(level=logging.INFO))
    assert not quiet.filter(record())  # up again: held until the next check, not counted
    assert outage.state is State.SUSPECT and outage.suppressed == 0


def test_installed_on_the_client_loggers_it_silences_their_children(outage, clock, caplog):
    child = logging.getLogger("aiokafka.consumer.fetcher")  # exists before install
    quiet = ClientErrorFilter(outage)
    quiet.install()
    try:
        late = logging.getLogger("faust.transport.drivers.health-test")  # created after
        quiet.install()  # what the monitor does after every check
        assert quiet in child.filters and quiet in late.filters
        assert quiet in logging.getLogger("aiokafka").filters
        assert quiet not in logging.getLogger("streams.app").filters
        outage.check_failed("x")
        clock.now += 2
        outage.check_failed("x")
        caplog.clear()
        child.error("Failed fetch messages from %s: %s", 1, NodeNotReadyError("node 1"))
        late.warning("Unable to update metadata from %s", [1])
        child.error("Topic %s is not authorized for this client", "t")
        assert [r.getMessage() for r in caplog.records] == [
            "Topic t is not authorized for this client"
        ]
        assert outage.suppressed == 2
    finally:
        quiet.uninstall()
    assert quiet not in child.filters and quiet not in logging.getLogger("aiokafka").filters


# --- BrokerMonitor ------------------------------------------------------------------------

PLAINTEXT = {"kafka_security_protocol": "PLAINTEXT"}


async def until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_the_monitor_declares_an_outage_after_two_failed_checks_and_its_end():
    up = True
    failed_checks: list[int] = []

    async def probe() -> None:
        if not up:
            failed_checks.append(1)
            raise KafkaConnectionError("refused")

    monitor = BrokerMonitor(Settings(**PLAINTEXT), interval_s=0.02, timeout_s=1, probe=probe)
    task = asyncio.create_task(monitor.run())
    try:
        await until(lambda: monitor.checks >= 2)
        assert monitor.reachable and monitor.down_since is None
        assert monitor.filter in logging.getLogger("aiokafka").filters
        up = False
        await until(lambda: not monitor.reachable)
        assert len(failed_checks) == 2 and monitor.down_since is not None
        up = True
        await until(lambda: monitor.reachable)
        assert monitor.down_since is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert monitor.filter not in logging.getLogger("aiokafka").filters


async def test_a_slow_answer_is_a_failed_check_but_no_outage():
    slow = True

    async def probe() -> None:
        nonlocal slow
        if slow:
            slow = False
            await asyncio.sleep(5)

    monitor = BrokerMonitor(Settings(**PLAINTEXT), interval_s=0.02, timeout_s=0.05, probe=probe)
    assert not await monitor.check()
    assert monitor.reachable and monitor.outage.state is State.SUSPECT
    assert await monitor.check()
    assert monitor.outage.state is State.UP


async def test_a_client_error_from_another_thread_calls_a_check_at_once(caplog):
    monitor = BrokerMonitor(Settings(**PLAINTEXT), interval_s=60, timeout_s=1, probe=_answers)
    task = asyncio.create_task(monitor.run())
    try:
        await until(lambda: monitor.checks == 1)
        thread = threading.Thread(
            target=logging.getLogger("aiokafka.conn").error,
            args=("Unable connect to node with id %s: %s", 1, KafkaConnectionError("refused")),
        )
        thread.start()
        thread.join()
        await until(lambda: monitor.checks == 2, timeout_s=5)  # not 60 s later
        await until(lambda: monitor.outage.state is State.UP)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Kafka answered: the held record was logged after all.
    assert any(
        r.name == "aiokafka.conn" and "Unable connect to node with id 1" in r.getMessage()
        for r in caplog.records
    )


async def test_a_client_failing_while_kafka_answers_is_logged_in_batches_not_checks(caplog):
    monitor = BrokerMonitor(Settings(**PLAINTEXT), interval_s=60, timeout_s=1, probe=_answers)
    assert monitor.early_check_gap_s == 0.5
    task = asyncio.create_task(monitor.run())
    sent = 0
    try:
        await until(lambda: monitor.checks == 1)
        client = logging.getLogger("aiokafka.consumer.fetcher")
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.2
        while loop.time() < end:  # one broker of many down: ~100 errors a second
            client.error("Failed fetch messages from %s: %s", 2, NodeNotReadyError("node 2"))
            sent += 1
            await asyncio.sleep(0.01)
        await until(lambda: monitor.outage.state is State.UP)
        assert 2 <= monitor.checks <= 5  # an early check every 0.5 s at most
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    logged = [r for r in caplog.records if r.name == "aiokafka.consumer.fetcher"]
    assert len(logged) == sent  # every one logged: no outage, nothing suppressed


async def _answers() -> None:
    return None


async def test_a_monitor_that_stopped_checking_vouches_for_nothing():
    clock = Clock()
    monitor = BrokerMonitor(
        Settings(**PLAINTEXT), interval_s=2, timeout_s=2, probe=_answers, clock=clock
    )
    assert not monitor.reachable  # no check yet
    assert await monitor.check()
    assert monitor.reachable
    clock.now += monitor.stale_after_s + 1  # its task died, say
    assert not monitor.reachable


async def test_the_metadata_probe_fails_fast_on_a_closed_port(caplog):
    (port,) = free_ports(1)
    bootstrap = f"127.0.0.1:{port}"
    monitor = BrokerMonitor(Settings(kafka_bootstrap=bootstrap, **PLAINTEXT), timeout_s=2)
    assert not await monitor.check()
    assert not await monitor.check()
    assert not monitor.reachable
    (started,) = warnings_of(caplog)
    assert f"Kafka at {bootstrap} unreachable since" in started
    assert f"no bootstrap server of {bootstrap} answered" in started


def test_the_monitor_checks_the_kafka_settings_when_built():
    with pytest.raises(Exception, match="CLIPGUARD_KAFKA_USERNAME"):
        BrokerMonitor(Settings())  # SASL_PLAINTEXT without credentials


# --- /ready -------------------------------------------------------------------------------


def worker_service(broker: object | None) -> WorkerService:
    done = asyncio.Event()
    done.set()
    app = SimpleNamespace(
        consumer=SimpleNamespace(assignment=lambda: {("clipguard.results", 0)}),
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=done)),
    )
    runtime = SimpleNamespace(settings=Settings(), codec=None, app=app, model_loaded=True)
    if broker is not None:
        runtime.broker = broker
    return WorkerService(runtime)


def test_readiness_has_a_broker_check_that_follows_the_monitor():
    broker = SimpleNamespace(reachable=True)
    service = worker_service(broker)
    assert service.readiness() == {
        "broker": True,
        "partitions_assigned": True,
        "table_recovered": True,
        "model_loaded": True,
    }
    broker.reachable = False
    assert service.readiness()["broker"] is False
    assert not all(service.readiness().values())  # /ready: 503


def test_readiness_without_a_monitor_keeps_the_other_checks():
    assert worker_service(None).readiness() == {
        "partitions_assigned": True,
        "table_recovered": True,
        "model_loaded": True,
    }


@pytest.mark.parametrize("field", ["interval_s", "timeout_s", "summary_every_s"])
def test_the_monitor_refuses_intervals_that_are_not_positive(field):
    with pytest.raises(Exception, match="above 0"):
        BrokerMonitor(Settings(**PLAINTEXT), **{field: 0})
