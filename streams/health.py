"""Is Kafka there? The worker's own answer, for `/ready` and for a quiet log during an outage.

Three parts, one worker process each:

- `BrokerMonitor` (asyncio): every `interval_s` it sends one Metadata request (no topics) over a
  small aiokafka client of its own, with the worker's credentials, and tells `OutageLog` whether
  Kafka answered within `timeout_s`. `reachable` is what `/ready` reports as its `broker` check.
- `OutageLog` (no I/O, clock injected): the state (up, suspect, down) and the few lines an
  outage gets: one WARNING when it is declared, a summary at most every `summary_every_s`, one
  WARNING when Kafka answers again.
- `ClientErrorFilter`: a `logging.Filter` on the `aiokafka` and `faust` loggers. While Kafka is
  up it lets everything through; while it is down it drops their WARNING and ERROR records about
  connection failures (aiokafka writes ~100 a second per worker then) and counts them for the
  summary.

An outage is declared after two consecutive failed checks, `interval_s` apart: one slow answer
(a GC pause, a leader election) is not an outage, and one that lasts longer than a check interval
is. The first failure, a failed check or a client's connection error, makes Kafka *suspect*:
`/ready` still answers 200, the clients' connection errors are held back, and a client error
wakes the monitor to check at once. If the next check fails the outage starts when the suspicion
did and the held records are counted as suppressed; if it succeeds they are logged after all (with
their original times), so a passing hiccup loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from aiokafka.protocol.metadata import MetadataRequest

from streams.admin import client_options
from streams.errors import ConfigError
from streams.settings import Settings

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 2.0
CHECK_TIMEOUT_S = 2.0
SUMMARY_EVERY_S = 30.0
FAILURES_TO_DECLARE = 2
EARLY_CHECK_GAP_S = 0.5
# The loggers (and their children) whose connection errors an outage silences.
CLIENT_LOGGERS = ("aiokafka", "faust")
# Records held while Kafka is suspect; past this they are only counted.
MAX_HELD = 1000

# An exception of one of these, in a record's arguments or exc_info, means "no connection".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    KafkaTimeoutError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)
# aiokafka's and Faust's lines about a lost broker that carry no exception object (or only its
# text): "Unable to update metadata from [1]", "Marking the coordinator dead (node 1)...".
CONNECTION_TEXT = re.compile(
    r"unable connect to|unable to (update|request) metadata|coordinator dead|not ready"
    r"|connect call failed|connection (refused|reset|closed|lost)|timed out"
    r"|KafkaConnectionError|NodeNotReadyError|RequestTimedOutError|KafkaTimeoutError",
    re.IGNORECASE,
)
_RELEASED = "clipguard_released"  # set on a held record when it is logged after all


class State(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"  # one failure seen; not an outage (yet)
    DOWN = "down"  # an outage: FAILURES_TO_DECLARE checks in a row failed


def is_connection_failure(record: logging.LogRecord) -> bool:
    """Whether a client's log record says that Kafka could not be reached."""
    exc = record.exc_info[1] if record.exc_info else None
    args = record.args if isinstance(record.args, tuple) else ()
    if any(isinstance(value, CONNECTION_ERRORS) for value in (exc, *args)):
        return True
    try:
        text = record.getMessage()
    except Exception:  # arguments that do not fit the message: logging reports it later
        return False
    return CONNECTION_TEXT.search(text) is not None


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


class OutageLog:
    """When Kafka went away and came back, told in a few lines.

    `check_failed` and `check_passed` come from the monitor's checks, `client_error` from the
    filter, in any thread (the Faust consumer runs aiokafka in a thread of its own). Lines go to
    `logger` outside the lock; the clock (`time.time`, seconds) is a parameter for the tests.
    """

    def __init__(
        self,
        where: str,
        *,
        summary_every_s: float = SUMMARY_EVERY_S,
        failures_to_declare: int = FAILURES_TO_DECLARE,
        max_held: int = MAX_HELD,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger = log,
        on_suspect: Callable[[], None] | None = None,
    ) -> None:
        self.where = where
        self.summary_every_s = summary_every_s
        self.failures_to_declare = max(1, failures_to_declare)
        self.max_held = max_held
        self.on_suspect = on_suspect
        self._clock = clock
        self._logger = logger
        self._lock = threading.Lock()
        self.state = State.UP
        self.failures = 0  # consecutive failed checks
        self.suppressed = 0  # client records dropped in this outage
        self._suspect_since: float | None = None
        self._down_since: float | None = None
        self._held: list[logging.LogRecord] = []
        self._overflow = 0  # held records past max_held: counted, not kept
        self._first_error: str | None = None
        self._last_check_error = ""
        self._last_summary = 0.0

    @property
    def reachable(self) -> bool:
        """False during an outage only (a suspect Kafka is still reachable)."""
        return self.state is not State.DOWN

    @property
    def down_since(self) -> float | None:
        """When the outage began (time.time() of its first failure); None when there is none."""
        return self._down_since

    def client_error(self, record: logging.LogRecord) -> bool:
        """A client logged a connection failure: True when it is taken (held or counted), False
        when it should be logged as it is."""
        wake = False
        with self._lock:
            if self.state is State.DOWN:
                self.suppressed += 1
                return True
            if self.state is State.UP:
                self._suspect(_message(record))
                wake = True
            if len(self._held) < self.max_held:
                self._held.append(record)
            else:
                self._overflow += 1
        if wake and self.on_suspect is not None:
            self.on_suspect()  # check now rather than at the next tick
        return True

    def check_failed(self, detail: str) -> None:
        lines: list[str] = []
        with self._lock:
            now = self._clock()
            self.failures += 1
            self._last_check_error = detail
            if self.state is State.UP:
                self._suspect(None)
            if self.state is State.SUSPECT and self.failures >= self.failures_to_declare:
                self.state = State.DOWN
                self._down_since = self._suspect_since
                self.suppressed += len(self._held) + self._overflow
                self._held, self._overflow = [], 0
                self._last_summary = now
                lines.append(self._started_line())
            elif self.state is State.DOWN and now - self._last_summary >= self.summary_every_s:
                self._last_summary = now
                lines.append(self._summary_line(now))
        for line in lines:
            self._logger.warning("%s", line)

    def check_passed(self) -> list[logging.LogRecord]:
        """Kafka answered. Returns the records held while it was suspect, to be logged now."""
        line = None
        with self._lock:
            now = self._clock()
            self.failures = 0
            if self.state is State.DOWN:
                line = self._ended_line(now)
            released, overflow = self._held, self._overflow
            self._reset()
        if line is not None:
            self._logger.warning("%s", line)
            return []
        if overflow:
            self._logger.warning(
                "%s further Kafka client errors were dropped while Kafka was checked",
                f"{overflow:,}",
            )
        return released

    def release_held(self) -> list[logging.LogRecord]:
        """The held records, when nothing will check any more (the monitor stops)."""
        with self._lock:
            released, self._held, self._overflow = self._held, [], 0
            return released

    # -- inside the lock -----------------------------------------------------------------

    def _suspect(self, first_error: str | None) -> None:
        self.state = State.SUSPECT
        self._suspect_since = self._clock()
        self._first_error = first_error

    def _reset(self) -> None:
        self.state = State.UP
        self.suppressed = 0
        self._suspect_since = self._down_since = self._first_error = None
        self._held, self._overflow = [], 0

    def _started_line(self) -> str:
        since = self._suspect_since if self._suspect_since is not None else self._clock()
        cause = self._last_check_error
        if self._first_error:
            cause += f"; first client error: {self._first_error}"
        return (
            f"Kafka at {self.where} unreachable since {_moment(since)} ({cause}); /ready answers "
            f"503 and client connection errors are counted, not logged, until it answers again"
        )

    def _summary_line(self, now: float) -> str:
        since = self._down_since if self._down_since is not None else now
        return (
            f"Kafka at {self.where} unreachable for {_duration(now - since)}; "
            f"{self.suppressed:,} client errors suppressed (last check: {self._last_check_error})"
        )

    def _ended_line(self, now: float) -> str:
        since = self._down_since if self._down_since is not None else now
        return (
            f"Kafka at {self.where} reachable again after {_duration(now - since)}; "
            f"{self.suppressed:,} client errors suppressed during the outage"
        )


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        return str(record.msg)


class ClientErrorFilter(logging.Filter):
    """Drops the Kafka clients' connection errors during an outage, counting them.

    A logger's filters see only the records logged on that very logger, not its children's, so
    `install` adds the filter to every logger under `prefixes` that exists (the monitor calls it
    again after each check, for loggers created since).
    """

    def __init__(self, outage: OutageLog, prefixes: Iterable[str] = CLIENT_LOGGERS) -> None:
        super().__init__()
        self.outage = outage
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno <= logging.ERROR:
            return True
        if getattr(record, _RELEASED, False) or not is_connection_failure(record):
            return True
        return not self.outage.client_error(record)

    def loggers(self) -> list[logging.Logger]:
        found = [logging.getLogger(name) for name in self.prefixes]
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and name.startswith(
                tuple(p + "." for p in self.prefixes)
            ):
                found.append(logger)
        return found

    def install(self) -> None:
        for logger in self.loggers():
            if self not in logger.filters:
                logger.addFilter(self)

    def uninstall(self) -> None:
        for logger in self.loggers():
            logger.removeFilter(self)


def release(records: Iterable[logging.LogRecord]) -> None:
    """Log held records after all, through their own loggers' handlers."""
    for record in records:
        setattr(record, _RELEASED, True)
        logging.getLogger(record.name).handle(record)


Probe = Callable[[], Awaitable[None]]


class BrokerMonitor:
    """Checks every `interval_s` that Kafka answers; `reachable` and `down_since` say how it went.

    `run()` is the worker's task (streams/app.py starts it with the app); it installs the
    filter on the client loggers while it runs. `probe` replaces the Metadata request (tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        interval_s: float = CHECK_INTERVAL_S,
        timeout_s: float = CHECK_TIMEOUT_S,
        summary_every_s: float = SUMMARY_EVERY_S,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("KAFKA_CHECK_INTERVAL_S", interval_s),
            ("KAFKA_CHECK_TIMEOUT_S", timeout_s),
            ("KAFKA_OUTAGE_SUMMARY_S", summary_every_s),
        ):
            if not value > 0:
                raise ConfigError(f"CLIPGUARD_{name}={value!r}: use a number of seconds above 0")
        self.settings = settings
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.checks = 0
        # A client error calls a check at once, but not sooner than this after the last one:
        # where a client keeps failing while Kafka answers (one broker of many down), its
        # errors are held and logged in batches this far apart instead of calling a check each.
        self.early_check_gap_s = min(EARLY_CHECK_GAP_S, interval_s / 4)
        # A monitor whose checks stopped (its task died, or never ran) vouches for nothing.
        self.stale_after_s = 2 * (interval_s + 2 * timeout_s)
        self._clock = clock
        self._last_check: float | None = None
        self._options = client_options(settings)  # ConfigError now, not in the task
        self._probe: Probe = probe or self._metadata
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.outage = OutageLog(
            settings.kafka_bootstrap,
            summary_every_s=summary_every_s,
            clock=clock,
            on_suspect=self._wake_soon,
        )
        self.filter = ClientErrorFilter(self.outage)

    @property
    def reachable(self) -> bool:
        """Kafka answered lately: no outage, and a check finished within stale_after_s."""
        last = self._last_check
        fresh = last is not None and self._clock() - last <= self.stale_after_s
        return fresh and self.outage.reachable

    @property
    def down_since(self) -> float | None:
        return self.outage.down_since

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.filter.install()
        try:
            while True:
                self._wake.clear()
                answered = await self.check()
                checked = self._loop.time()
                self.filter.install()
                if answered:  # a client's connection error may call the next check early
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.interval_s)
                        gap = checked + self.early_check_gap_s - self._loop.time()
                        await asyncio.sleep(max(0.0, gap))
                else:  # the second failure counts only a whole interval after the first
                    await asyncio.sleep(self.interval_s)
        finally:
            self._loop = self._wake = None
            self.filter.uninstall()
            release(self.outage.release_held())
            await self._close_client()

    async def check(self) -> bool:
        """One check: True when Kafka answered within timeout_s."""
        self.checks += 1
        try:
            await asyncio.wait_for(self._probe(), self.timeout_s)
        except Exception as exc:  # whatever kept the answer away, Kafka did not answer
            await self._close_client()  # the next check starts from the bootstrap servers
            self.outage.check_failed(self._describe(exc))
            self._last_check = self._clock()
            return False
        self._last_check = self._clock()
        release(self.outage.check_passed())
        return True

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self.timeout_s:g} s"
        text = str(exc)  # aiokafka's errors name their class themselves
        return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"

    def _wake_soon(self) -> None:
        """From any thread: check now."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(wake.set)

    async def _metadata(self) -> None:
        """A Metadata request for no topics: the cheapest question every broker answers."""
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self.settings.kafka_bootstrap,
                client_id="clipguard-health",
                request_timeout_ms=max(1, int(self.timeout_s * 1000)),
                # Its own refresh asks for every topic's metadata; the checks keep it current.
                metadata_max_age_ms=24 * 3600 * 1000,
                **self._options,
            )
            self._client = client
            try:
                await client.bootstrap()  # a Metadata request to a bootstrap server
            except KafkaConnectionError as exc:
                raise KafkaConnectionError(
                    f"no bootstrap server of {self.settings.kafka_bootstrap} answered"
                ) from exc
        else:
            client = self._client
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
        if not nodes:
            raise KafkaError("the cluster lists no live broker")
        random.shuffle(nodes)
        failure: BaseException | None = None
        for node in nodes:  # any one broker that answers will do
            try:
                response = await client.send(
                    node, MetadataRequest([], allow_auto_topic_creation=False)
                )
            except KafkaError as exc:
                failure = exc
                continue
            if response.brokers:
                client.cluster.update_metadata(response)  # brokers that came or went
                return
            failure = KafkaError("the cluster lists no live broker")
        assert failure is not None
        raise failure

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.timeout_s)
