"""The worker's logs (streams/logs.py): one line per clip outcome, JSON on request, no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streams.codec import RESULT, default_codec
from streams.errors import ConfigError, ErrorCode
from streams.logs import (
    LIBRARY_LOGGERS,
    OUR_LOGGERS,
    clip_outcome_line,
    configure_logging,
    log_outcome,
    scrub,
)
from streams.pipeline import Out
from streams.records import ClassificationResult, ClipRequest
from streams.results import base_result, error_result
from streams.settings import Settings
from streams.topics import Topic

codec = default_codec()
CLIP_ID = "0123456789abcdef01234567"
OUTCOME_KEYS = [
    "clip_id",
    "tenant",
    "camera",
    "status",
    "video",
    "risk",
    "labels",
    "error_code",
    "stage_ms",
    "total_ms",
    "duration_ms",
]


def request(clip_id: str = CLIP_ID) -> ClipRequest:
    return {
        "id": clip_id,
        "tenant": "acme",
        "camera_id": "134188-VI08",
        "parent_id": "0" * 24,
        "analyse_id": 7,
        "video_uri": "https://vms.example/exports/clip.mp4?X-Amz-Signature=abc",
        "videoname": "",
        "filesize": None,
        "metadata": {"site": "north"},
        "created_at": "2026-03-01T08:00:00+00:00",
    }


def done_result() -> ClassificationResult:
    result = base_result(request(), started_at="2026-03-01T08:00:01+00:00")
    result["status"] = {"classify": "done", "video": "done"}
    result["model"], result["version"] = "clipguard-pack", "2026.11.0"
    result["risk"], result["labels"] = "intrusion", ["person", "intrusion"]
    result["timing"] = {
        "fetch": 1.25,
        "decode": 180.04,
        "encode": 20.0,
        "classify": 402.5,
        "total": 610.0,
    }
    result["duration"], result["duration_seconds"] = 610_400, 0
    return result


def failed_result() -> ClassificationResult:
    return error_result(
        request("fedcba9876543210fedcba98"),
        ErrorCode.INVALID_VIDEO,
        "clip fedcba9876543210fedcba98: not a video",
        started_at="2026-03-01T08:00:01+00:00",
        timing={"fetch": 2.0},
    )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers and levels: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = (*OUR_LOGGERS, *LIBRARY_LOGGERS, "streams.outcome")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def configured(**settings: str) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(Settings(**settings), stream=stream)  # type: ignore[arg-type]
    return stream


def out(topic: Topic, result: ClassificationResult) -> Out:
    return Out(topic, result["id"].encode(), codec.serialize(RESULT, result))


def test_the_outcome_of_a_done_clip_has_its_fields_and_stage_times():
    line = clip_outcome_line(done_result())
    assert list(line) == OUTCOME_KEYS
    assert line == {
        "clip_id": CLIP_ID,
        "tenant": "acme",
        "camera": "134188-VI08",
        "status": "done",
        "video": "done",
        "risk": "intrusion",
        "labels": ["person", "intrusion"],
        "error_code": 0,
        "stage_ms": {"fetch": 1.2, "decode": 180.0, "encode": 20.0, "classify": 402.5},
        "total_ms": 610.0,
        "duration_ms": 610.4,
    }


def test_one_json_line_per_result_sent_to_the_results_topic(restore_logging):
    stream = configured(log_format="json")
    done, failed = done_result(), failed_result()
    log_outcome(codec, [out(Topic.RESULTS, done), out(Topic.PROGRESS, done)])
    log_outcome(codec, [out(Topic.RESULTS, failed), Out(Topic.DEADLETTER, b"k", b"\x00")])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert list(first) == ["ts", "level", "logger", "event", *OUTCOME_KEYS]
    assert (first["level"], first["logger"], first["event"]) == (
        "INFO",
        "streams.outcome",
        "clip_outcome",
    )
    assert first["clip_id"] == CLIP_ID and first["risk"] == "intrusion"
    assert first["stage_ms"]["classify"] == 402.5 and first["duration_ms"] == 610.4
    assert second["clip_id"] == "fedcba9876543210fedcba98"
    assert (second["status"], second["video"], second["risk"]) == ("error", "error", "danger")
    assert second["error_code"] == ErrorCode.INVALID_VIDEO == 201
    assert second["labels"] == [] and second["stage_ms"] == {"fetch": 2.0}
    assert second["total_ms"] == 2.0 and second["duration_ms"] == 2.0


def test_the_text_format_is_one_key_value_line(restore_logging):
    stream = configured()  # text is the default
    log_outcome(codec, [out(Topic.RESULTS, done_result())])
    (line,) = stream.getvalue().splitlines()
    assert "] [INFO] streams.outcome: clip_outcome clip_id=" + CLIP_ID in line
    assert "labels=person,intrusion" in line and "error_code=0" in line
    assert "stage_ms=fetch:1.2,decode:180,encode:20,classify:402.5" in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_query_strings_bearer_tokens_and_api_keys_are_masked(restore_logging, log_format):
    stream = configured(log_format=log_format)
    log = logging.getLogger("streams.test")
    log.warning("fetching %s failed", "https://vms/x.mp4?X-Amz-Signature=abc")
    log.warning("header was Bearer cg_abc_def; key cg_1a2b3c4d_s3cr3t-Value_x seen")
    logging.getLogger("aiohttp.client").error("GET http://h:8/p?token=zz&a=b: 403")
    try:
        raise RuntimeError("download https://vms/y.mp4?sig=topsecret refused")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    for secret in ("X-Amz-Signature", "abc", "cg_abc_def", "s3cr3t", "token=zz", "topsecret"):
        assert secret not in text
    assert "https://vms/x.mp4?<redacted>" in text
    assert "Bearer <redacted>" in text and "cg_1a2b3c4d_<redacted>" in text
    assert "http://h:8/p?<redacted>: 403" in text
    assert "https://vms/y.mp4?<redacted> refused" in text  # the traceback too


def test_scrubbing_is_idempotent_and_leaves_plain_urls():
    once = scrub("see https://vms/x.mp4?X-Amz-Signature=abc and Bearer cg_abc_def")
    assert scrub(once) == once == "see https://vms/x.mp4?<redacted> and Bearer <redacted>"
    assert scrub("file:///srv/media/a.mp4 http://vms/b.mp4") == (
        "file:///srv/media/a.mp4 http://vms/b.mp4"
    )


def test_library_levels_are_applied(restore_logging):
    stream = configured()
    for name in LIBRARY_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING
    for name in OUR_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.INFO
    assert logging.getLogger().level == logging.WARNING  # every other library too
    logging.getLogger("faust.transport.consumer").info("chatter")
    logging.getLogger("aiokafka.conn").warning("kept")
    logging.getLogger("streams.app").info("ours")
    text = stream.getvalue()
    assert "chatter" not in text and "kept" in text and "ours" in text

    configured(log_level_libraries="info")
    assert logging.getLogger("faust").level == logging.INFO
    assert len(logging.getLogger().handlers) == 1  # replaced, not added


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"log_format": "xml"}, "CLIPGUARD_LOG_FORMAT"),
        ({"log_level_libraries": "LOUD"}, "CLIPGUARD_LOG_LEVEL_LIBRARIES"),
    ],
)
def test_a_bad_logging_setting_is_a_config_error(restore_logging, changes, variable):
    with pytest.raises(ConfigError, match=variable):
        configured(**changes)


def test_the_settings_come_from_the_environment():
    settings = Settings.from_env(
        {"CLIPGUARD_LOG_FORMAT": "json", "CLIPGUARD_LOG_LEVEL_LIBRARIES": "ERROR"}
    )
    assert (settings.log_format, settings.log_level_libraries) == ("json", "ERROR")
    assert (Settings().log_format, Settings().log_level_libraries) == ("text", "WARNING")
