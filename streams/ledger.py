"""What the result table of this worker still owes, and what it may forget (free of Kafka).

Two bounds every clip in the table lives under:
- a deadline: a clip with no final result `deadline_s` after the table first saw it pending
  gets one, an error result that sends the alarm to a human (`deadline_outputs`); a real result
  arriving later replaces it (the table's store rule lets done replace error);
- the retention: a result older than `retention_s` leaves the table.

The results step tells the ledger about every record it stores (`stored`). After a rebalance or
a restart the table is recovered from its changelog, and `rebuild` reads the recovered records
of each partition this worker now owns, so neither bound depends on a worker's memory: a
recovered pending clip gets a full deadline from the moment of recovery, a recovered result its
remaining retention from its creation time.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from streams.codec import RESULT, AvroCodec
from streams.errors import ErrorCode
from streams.pipeline import Origin, Out, dead_letter
from streams.records import ClassificationResult
from streams.results import error_result, is_final, request_of
from streams.topics import Topic

log = logging.getLogger(__name__)


@dataclass
class _Partition:
    pending: dict[bytes, float] = field(default_factory=dict)  # key -> when first seen pending
    stored: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    # Found expired while rebuilding, outside the results agent (the table's only writer): the
    # agent deletes them with the partition's next record.
    to_forget: list[bytes] = field(default_factory=list)


class Ledger:
    def __init__(self, deadline_s: float, retention_s: float) -> None:
        self.deadline_s = deadline_s
        self.retention_s = retention_s
        self._partitions: dict[int, _Partition] = collections.defaultdict(_Partition)

    def stored(
        self, partition: int, key: bytes, record: ClassificationResult, now: float
    ) -> list[bytes]:
        """Note that `record` was stored under `key` now; return the keys to forget."""
        part = self._partitions[partition]
        if is_final(record):
            part.pending.pop(key, None)
        else:
            part.pending.setdefault(key, now)
        part.stored.append((now, key))
        forget, part.to_forget = part.to_forget, []
        return forget + self._expired(part, now)

    def overdue(self, now: float, partitions: Iterable[int]) -> list[tuple[int, bytes]]:
        """Pending keys past their deadline, in the given partitions; each is reported once."""
        late = []
        for partition in partitions:
            pending = self._partitions[partition].pending
            for key, since in list(pending.items()):
                if now - since > self.deadline_s:
                    late.append((partition, key))
                    del pending[key]
        return late

    def rebuild(
        self, partition: int, records: Iterable[tuple[bytes, ClassificationResult]], now: float
    ) -> None:
        """Start `partition` afresh from its recovered records."""
        part = _Partition()
        dated = []
        for key, record in records:
            if not is_final(record):
                part.pending[key] = now
            dated.append((_created(record, now), key))
        part.stored.extend(sorted(dated))
        part.to_forget = self._expired(part, now)
        self._partitions[partition] = part

    def is_forgotten(self, partition: int, key: bytes) -> bool:
        """Past the retention, waiting for the agent to delete it: not to be served."""
        return key in self._partitions[partition].to_forget

    def restart_clocks(self, now: float) -> None:
        """Every pending clip's deadline starts again now (after this worker stalled)."""
        for part in self._partitions.values():
            for key in part.pending:
                part.pending[key] = now

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer owns: their clips are another worker's to answer."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def pending_count(self) -> int:
        return sum(len(p.pending) for p in self._partitions.values())

    def _expired(self, part: _Partition, now: float) -> list[bytes]:
        expired = []
        while part.stored and now - part.stored[0][0] > self.retention_s:
            expired.append(part.stored.popleft()[1])
        return expired


def _created(record: ClassificationResult, default: float) -> float:
    try:
        return datetime.fromisoformat(record["created_at"]).timestamp()
    except (ValueError, TypeError, OverflowError):
        return default


def deadline_result(pending: ClassificationResult, deadline_s: float) -> ClassificationResult:
    """The error result of a clip that got no final result in time (risk: danger)."""
    request = request_of(pending)
    message = (
        f"clip {pending['id']}: not processed within {deadline_s:.0f} s "
        "(CLIPGUARD_CLIP_DEADLINE_S); a later result replaces this one"
    )
    return error_result(
        request,
        ErrorCode.DEADLINE_EXCEEDED,
        message,
        started_at=pending["started_at"],
        timing={},
        video_done=pending["status"]["video"] == "done",
        video=pending["video"],
    )


def deadline_outputs(
    codec: AvroCodec,
    table_topic: str,
    partition: int,
    key: bytes,
    pending_value: bytes,
    deadline_s: float,
) -> list[Out]:
    """The error result of a late clip and a dead letter holding its pending record."""
    pending = codec.parse(pending_value, expect=RESULT)
    if is_final(pending):  # answered meanwhile (the ledger and the table raced): nothing to do
        return []
    result = deadline_result(pending, deadline_s)
    letter = dead_letter(
        codec,
        Origin(table_topic, partition, -1, key),
        pending_value,
        stage="deadline",
        code=ErrorCode.DEADLINE_EXCEEDED,
        message=result["error_msg"],
        clip_id=pending["id"],
    )
    return [Out(Topic.RESULTS, key, codec.serialize(RESULT, result)), letter]
