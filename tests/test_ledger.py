"""The ledger of the result table: deadlines and retention, free of Kafka (streams/ledger.py)."""

from streams.codec import DEAD_LETTER, RESULT, default_codec
from streams.errors import ErrorCode
from streams.ledger import Ledger, deadline_outputs
from streams.results import base_result
from tests.kafka_io import clip_request

codec = default_codec()


def pending(**changes):
    return {**base_result(clip_request("upload://x.mp4"), started_at=""), **changes}


def done(record):
    return {**record, "status": {"classify": "done", "video": "done"}, "risk": "safe"}


def test_results_are_forgotten_after_the_retention_partition_by_partition():
    ledger = Ledger(deadline_s=60, retention_s=100)
    record = done(pending())
    assert ledger.stored(0, b"a", record, now=0) == []
    assert ledger.stored(1, b"b", record, now=50) == []
    assert ledger.stored(0, b"c", record, now=90) == []
    assert ledger.stored(0, b"d", record, now=101) == [b"a"]  # b is on another partition
    assert ledger.stored(1, b"e", record, now=151) == [b"b"]
    assert ledger.stored(0, b"f", record, now=500) == [b"c", b"d"]


def test_a_clip_pending_past_its_deadline_is_reported_once():
    ledger = Ledger(deadline_s=60, retention_s=1000)
    ledger.stored(2, b"late", pending(), now=0)
    ledger.stored(2, b"quick", pending(), now=0)
    ledger.stored(2, b"quick", done(pending()), now=30)
    assert ledger.overdue(now=59, partitions=[2]) == []
    assert ledger.overdue(now=61, partitions=[2]) == [(2, b"late")]
    assert ledger.overdue(now=200, partitions=[2]) == []  # answered once


def test_only_owned_partitions_are_answered_for():
    ledger = Ledger(deadline_s=10, retention_s=1000)
    ledger.stored(1, b"x", pending(), now=0)
    assert ledger.overdue(now=100, partitions=[0, 2]) == []
    ledger.forget([1])
    assert ledger.overdue(now=100, partitions=[1]) == []


def test_after_a_restart_pending_clips_get_a_full_deadline_and_old_results_expire():
    ledger = Ledger(deadline_s=60, retention_s=3600)
    old = done(pending(created_at="2026-01-01T00:00:00.000+00:00"))
    recent = done(pending(created_at="2026-12-02T10:00:00.000+00:00"))
    waiting = pending()
    now = 1_796_205_600.0  # 2026-12-02T10:00:00Z + a little
    ledger.rebuild(0, [(b"old", old), (b"recent", recent), (b"waiting", waiting)], now=now)
    assert ledger.is_forgotten(0, b"old") and not ledger.is_forgotten(0, b"recent")
    assert ledger.overdue(now=now + 59, partitions=[0]) == []
    assert ledger.overdue(now=now + 61, partitions=[0]) == [(0, b"waiting")]
    # The results agent deletes the expired one with the partition's next record.
    assert b"old" in ledger.stored(0, b"new", waiting, now=now + 62)


def test_a_late_clip_gets_a_fail_safe_error_result_and_a_dead_letter():
    record = pending()
    value = codec.serialize(RESULT, record)
    key = record["id"].encode()
    result_out, letter_out = deadline_outputs(codec, "clipguard.progress", 3, key, value, 60)
    result = codec.parse(result_out.value, expect=RESULT)
    assert result_out.key == key and result["id"] == record["id"]
    assert result["error_code"] == ErrorCode.DEADLINE_EXCEEDED and result["risk"] == "danger"
    assert result["status"]["classify"] == "error" and "60 s" in result["error_msg"]
    letter = codec.parse(letter_out.value, expect=DEAD_LETTER)
    assert letter["stage"] == "deadline" and letter["value"] == value and letter["partition"] == 3


def test_a_clip_answered_meanwhile_gets_no_deadline_result():
    value = codec.serialize(RESULT, done(pending()))
    assert deadline_outputs(codec, "clipguard.progress", 0, b"k", value, 60) == []


def test_after_a_stall_pending_clips_get_their_deadline_afresh():
    ledger = Ledger(deadline_s=60, retention_s=1000)
    ledger.stored(0, b"waiting", pending(), now=0)
    ledger.restart_clocks(now=100)  # the worker was frozen from 10 to 100
    assert ledger.overdue(now=150, partitions=[0]) == []
    assert ledger.overdue(now=161, partitions=[0]) == [(0, b"waiting")]
