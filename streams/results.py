"""Result records and their published JSON shape.

The Avro record (schemas/clipguard.ClassificationResult.avsc) carries every field of the
published result; `render_result` turns it into exactly the JSON the documentation shows
(docs/api.md), key for key: `parentId`/`cameraId`, dotted `video.specs` keys, and so on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from streams.errors import ErrorCode
from streams.records import ClassificationResult, ClipRequest, VideoSpecs

PENDING, DONE, ERROR = "pending", "done", "error"

# Avro field name -> published JSON key, in the published order.
_SPEC_KEYS = {
    "height": "height",
    "original_width": "original.width",
    "duration": "duration",
    "fps": "fps",
    "nframes": "nframes",
    "original_fps": "original.fps",
    "original_height": "original.height",
    "original_nframes": "original.nframes",
    "width": "width",
}
_FPS_FIELDS = ("fps", "original_fps")

_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
_process_random = os.urandom(5)


def new_clip_id(now: float | None = None) -> str:
    """A MongoDB-style ObjectId: 4-byte seconds, 5 random bytes, 3-byte counter (sorts by time)."""
    seconds = int(time.time() if now is None else now)
    count = next(_counter) & 0xFFFFFF
    return (seconds.to_bytes(4, "big") + _process_random + count.to_bytes(3, "big")).hex()


def iso_timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 with milliseconds and the UTC offset, as the published example writes it."""
    moment = moment or datetime.now(UTC).astimezone()
    return moment.isoformat(timespec="milliseconds")


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def render_result(record: ClassificationResult) -> dict[str, Any]:
    video = record["video"]
    specs: Mapping[str, Any] | None = video["specs"]
    rendered_specs = None
    if specs is not None:
        rendered_specs = {
            key: _number(specs[field]) if field in _FPS_FIELDS else specs[field]
            for field, key in _SPEC_KEYS.items()
        }
    return {
        "id": record["id"],
        "status": {"classify": record["status"]["classify"], "video": record["status"]["video"]},
        "parentId": record["parent_id"],
        "cameraId": record["camera_id"],
        "analyse_id": record["analyse_id"],
        "tenant": record["tenant"],
        "duration": record["duration"],
        "duration_seconds": record["duration_seconds"],
        "model": record["model"],
        "version": record["version"],
        "error_code": record["error_code"],
        "error_msg": record["error_msg"],
        "risk": record["risk"],
        "labels": list(record["labels"]),
        "scores": dict(record["scores"]),
        "video": {
            "videoname": video["videoname"],
            "filesize": video["filesize"],
            "specs": rendered_specs,
        },
        "timing": dict(record["timing"]),
        "metadata": dict(record["metadata"]),
        "created_at": record["created_at"],
        "started_at": record["started_at"],
    }


def result_from_json(doc: Mapping[str, Any]) -> ClassificationResult:
    """The inverse of `render_result` (used for the golden test and for replays)."""
    video = doc["video"]
    specs = video.get("specs")
    return {
        "id": doc["id"],
        "status": {"classify": doc["status"]["classify"], "video": doc["status"]["video"]},
        "parent_id": doc["parentId"],
        "camera_id": doc["cameraId"],
        "analyse_id": doc["analyse_id"],
        "tenant": doc["tenant"],
        "duration": doc["duration"],
        "duration_seconds": doc["duration_seconds"],
        "model": doc["model"],
        "version": doc["version"],
        "error_code": doc["error_code"],
        "error_msg": doc["error_msg"],
        "risk": doc["risk"],
        "labels": list(doc["labels"]),
        "scores": {k: float(v) for k, v in doc["scores"].items()},
        "video": {
            "videoname": video["videoname"],
            "filesize": video["filesize"],
            "specs": None
            if specs is None
            else cast(VideoSpecs, {field: specs[key] for field, key in _SPEC_KEYS.items()}),
        },
        "timing": {k: float(v) for k, v in doc["timing"].items()},
        "metadata": dict(doc["metadata"]),
        "created_at": doc["created_at"],
        "started_at": doc["started_at"],
    }


def base_result(request: ClipRequest, *, started_at: str) -> ClassificationResult:
    """A result for `request` with nothing processed yet (status pending)."""
    return {
        "id": request["id"],
        "status": {"classify": PENDING, "video": PENDING},
        "parent_id": request["parent_id"],
        "camera_id": request["camera_id"],
        "analyse_id": request["analyse_id"],
        "tenant": request["tenant"],
        "duration": 0,
        "duration_seconds": 0,
        "model": "",
        "version": "",
        "error_code": int(ErrorCode.OK),
        "error_msg": "",
        "risk": "",
        "labels": [],
        "scores": {},
        "video": {
            "videoname": request["videoname"] or _name_of(request["video_uri"]),
            "filesize": request["filesize"] or 0,
            "specs": None,
        },
        "timing": {},
        "metadata": dict(request["metadata"]),
        "created_at": request["created_at"],
        "started_at": started_at,
    }


def error_result(
    request: ClipRequest,
    code: ErrorCode,
    message: str,
    *,
    started_at: str,
    timing: Mapping[str, float],
    video_done: bool = False,
) -> ClassificationResult:
    result = base_result(request, started_at=started_at)
    result["status"] = {"classify": ERROR, "video": DONE if video_done else ERROR}
    result["error_code"] = int(code)
    result["error_msg"] = message
    finish_timing(result, timing)
    return result


def finish_timing(result: ClassificationResult, timing: Mapping[str, float]) -> None:
    """Fill `timing` (ms per stage + total) and `duration` (microseconds, as published)."""
    total_ms = sum(timing.values())
    result["timing"] = {**{k: round(v, 3) for k, v in timing.items()}, "total": round(total_ms, 3)}
    result["duration"] = int(total_ms * 1000)
    result["duration_seconds"] = int(total_ms // 1000)


def is_final(result: ClassificationResult) -> bool:
    return bool(result["status"]["classify"] in (DONE, ERROR))


def _name_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]
