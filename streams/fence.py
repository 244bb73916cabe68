"""A fence against zombie table writes: a worker that stalled writes nothing until Kafka's group
has confirmed its partitions again (free of Kafka; streams/app.py feeds it).

The sequence it stops (seen in a chaos run, and reproduced by tests/chaos): worker B is frozen
(SIGSTOP, a long GC, a starved VM) past its session timeout; worker A takes B's partitions and
writes their results to the table's changelog; B thaws and, in the milliseconds before it learns
it was evicted, its results agent writes table entries for its old partitions. Faust then
records B's own changelog offset as applied, so when B gets those partitions back, recovery
starts after it and skips A's records for good: finished clips served as pending (and, since
the deadline, as late errors).

B's event loop did not run while it was frozen, so B can tell: a tick task notes the time every
`tick_s`; a write finds the last tick older than the session timeout (or the tick task finds it
ran that late) and the fence closes. It opens again when partitions are assigned to this worker
(a new group generation: whatever B owns then, it owns for sure). A write refused is not lost:
the partition's new owner processes the same messages from the last committed offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StallFence:
    def __init__(
        self, session_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session_timeout_s = session_timeout_s
        self._clock = clock
        self._last_tick = clock()
        self.closed = False
        self.refused = 0

    def tick(self) -> None:
        """Called every second or so by a task of the event loop."""
        self._check()
        self._last_tick = self._clock()

    def may_write(self) -> bool:
        self._check()
        if self.closed:
            self.refused += 1
        return not self.closed

    def partitions_assigned(self) -> None:
        """The group confirmed this worker's partitions: writes are safe again."""
        if self.closed:
            log.warning(
                "partitions assigned again: table writes resume (%d refused while fenced)",
                self.refused,
            )
        self.closed = False
        self._last_tick = self._clock()

    def _check(self) -> None:
        stalled = self._clock() - self._last_tick
        if not self.closed and stalled > self.session_timeout_s:
            self.closed = True
            log.warning(
                "this worker did not run for %.0f s (over the %.0f s session timeout): it may "
                "have lost its partitions, so it writes no table entry until the group assigns "
                "partitions again",
                stalled,
                self.session_timeout_s,
            )
