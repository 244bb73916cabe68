"""The worker's logs: one line per clip outcome, JSON when asked, secrets never written.

- `configure_logging(settings)` (called by `clipguard worker` before Faust starts; Faust is
  told not to set up logging itself): one handler on the root logger, on stderr. ClipGuard's
  own loggers (`streams.*`, `api.*`, `devtools.*`) log at INFO; Faust, aiokafka, mode, aiohttp
  and everything else at `CLIPGUARD_LOG_LEVEL_LIBRARIES` (WARNING). `CLIPGUARD_LOG_FORMAT`:
  `text` (one line, `[time] [pid] [LEVEL] logger: message`) or `json` (one JSON object a line).
- `Scrubber`, a filter on that handler, so every record passes it (those of every logger, and
  those the broker monitor held during an outage and releases later): a query string after an
  http(s) URL becomes `?<redacted>` (presigned URLs carry their signature there), a
  `Bearer <token>` becomes `Bearer <redacted>` and an API key `cg_<id>_<secret>` becomes
  `cg_<id>_<redacted>` (the id is public: `clipguard keys list` shows it). The message, its
  arguments and an exception's traceback are scrubbed.
- `log_outcome(codec, outs)`: one `clip_outcome` line (logger `streams.outcome`) for each
  result a step delivered to the results topic: clip id, tenant, camera, status, risk, labels,
  error code, stage times and duration (`clip_outcome_line`). In JSON its fields are the JSON
  object's own keys, next to `ts`, `level`, `logger` and `event`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from streams.codec import RESULT, AvroCodec
from streams.errors import CodecError, ConfigError
from streams.pipeline import Out
from streams.records import ClassificationResult
from streams.settings import Settings
from streams.topics import Topic

OUR_LOGGERS = ("streams", "api", "devtools")
LIBRARY_LOGGERS = ("faust", "aiokafka", "mode", "aiohttp")
FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Faust's own line format before (`[time] [pid] [LEVEL] message`), with the logger's name.
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
OUTCOME = "clip_outcome"

outcome_log = logging.getLogger("streams.outcome")

# A query string after an http(s) URL: up to whitespace, a quote or a fragment, and not the
# punctuation that ends a sentence or an argument list.
_QUERY = re.compile(r"(?i)\b(https?://[^\s?#\"'<>]*)\?[^\s#\"'<>]*[^\s#\"'<>.,;:!)\]]")
_BEARER = re.compile(r"(?i)\b(Bearer)\s+[^\s\"',;]+")
_API_KEY = re.compile(r"\b(cg_[0-9A-Za-z]+)_[0-9A-Za-z_-]+")
REDACTED = "<redacted>"


def scrub(text: str) -> str:
    """`text` without query strings of http(s) URLs, bearer tokens and API key secrets."""
    text = _QUERY.sub(rf"\1?{REDACTED}", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _API_KEY.sub(rf"\1_{REDACTED}", text)


class Scrubber(logging.Filter):
    """Rewrites every record it sees with `scrub` (message, arguments, traceback); drops none."""

    _traceback = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: logging reports it itself
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        outcome = getattr(record, OUTCOME, None)
        if isinstance(outcome, dict):  # its fields are ours, but a camera id is free text
            setattr(record, OUTCOME, _scrubbed(outcome))
        return True


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, then message, or a clip outcome's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        outcome = getattr(record, OUTCOME, None)
        if isinstance(outcome, dict):
            line["event"] = OUTCOME
            line.update(outcome)
        else:
            line["message"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def level_of(name: str, setting: str) -> int:
    level = name.strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"{setting}={name!r}: use one of {', '.join(LEVELS)}")
    return int(getattr(logging, level))


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """The worker's logging (module docstring); returns the one handler it installed."""
    if settings.log_format not in FORMATS:
        raise ConfigError(
            f"CLIPGUARD_LOG_FORMAT={settings.log_format!r}: use one of {', '.join(FORMATS)}"
        )
    libraries = level_of(settings.log_level_libraries, "CLIPGUARD_LOG_LEVEL_LIBRARIES")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(Scrubber())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(libraries)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libraries)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


def clip_outcome_line(result: ClassificationResult) -> dict[str, Any]:
    """The fields of a clip's outcome line: what happened to it, how fast, nothing secret."""
    timing = {k: round(float(v), 1) for k, v in result["timing"].items()}
    return {
        "clip_id": result["id"],
        "tenant": result["tenant"],
        "camera": result["camera_id"],
        "status": result["status"]["classify"],
        "video": result["status"]["video"],
        "risk": result["risk"],
        "labels": list(result["labels"]),
        "error_code": int(result["error_code"]),
        "stage_ms": {k: v for k, v in timing.items() if k != "total"},
        "total_ms": timing.get("total"),
        "duration_ms": round(result["duration"] / 1000, 1),  # the record's is microseconds
    }


def text_of(fields: Mapping[str, Any]) -> str:
    """`clip_outcome key=value ...` for the text format (lists comma-joined, maps k:v)."""
    parts = [OUTCOME]
    for key, value in fields.items():
        if isinstance(value, dict):
            value = (
                ",".join(
                    f"{k}:{v:g}" if isinstance(v, float) else f"{k}:{v}" for k, v in value.items()
                )
                or "-"
            )
        elif isinstance(value, list):
            value = ",".join(map(str, value)) or "-"
        elif value is None or value == "":
            value = "-"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def log_outcome(codec: AvroCodec, outs: Iterable[Out]) -> None:
    """One `clip_outcome` line for each output that went to the results topic."""
    if not outcome_log.isEnabledFor(logging.INFO):
        return
    for out in outs:
        if out.topic != Topic.RESULTS:
            continue
        try:
            result = codec.parse(out.value, expect=RESULT)
        except CodecError:  # ours, so it parses; if not, the results agent dead-letters it
            continue
        fields = clip_outcome_line(result)
        outcome_log.info("%s", text_of(fields), extra={OUTCOME: fields})
