"""Result records and their published JSON shape.

The Avro record (schemas/clipguard.ClassificationResult.avsc) carries every field of the
published result; `render_result` turns it into exactly the JSON the documentation shows
(docs/api.md), key for key: `parentId`/`cameraId`, dotted `video.specs` keys, and so on.

Every result, whatever its status, carries every published value a router parses:
- `risk` is one of `policy.RISKS`. A clip not classified (`status.classify` `pending` or
  `error`) is `danger` (UNVERIFIED_RISK): an alarm nobody has verified goes to a human, never
  to the bin. Only a `done` result carries the policy's verdict (`safe`, `danger`, `intrusion`).
- `scores` holds the 13 labels of `policy.LABELS`; until the clip is classified each is 0.0
  and `labels` is [].
- `video.specs` holds the 9 fields: every field 0 while `status.video` is not `done` (not
  decoded yet, or fetch or decode failed), the decoded clip's once it is (also when classify
  then fails: `error_result(..., video=...)`).
`base_result` and `error_result` build results so; `render_result` applies the same rule to a
record written before it (risk "", scores {}, specs null; the result table keeps records for
the retention), so no published result lacks one of these values.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from streams.errors import ErrorCode
from streams.records import ClassificationResult, ClipRequest, Video, VideoSpecs
from streams.stages.policy import LABELS

PENDING, DONE, ERROR = "pending", "done", "error"
# The risk of every clip that is not classified (pending or error): the fail-safe choice.
UNVERIFIED_RISK = "danger"

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


def new_clip_id(now: float | None = None) -> str:
    """An ObjectId-shaped id: 4-byte seconds (ids sort by time), then 8 random bytes.

    MongoDB's layout (a per-process constant and a counter) would make the next id guessable;
    64 random bits are not.
    """
    seconds = int(time.time() if now is None else now)
    return (seconds.to_bytes(4, "big") + secrets.token_bytes(8)).hex()


def iso_timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 with milliseconds and the UTC offset, as the published example writes it."""
    moment = moment or datetime.now(UTC).astimezone()
    return moment.isoformat(timespec="milliseconds")


def zero_scores() -> dict[str, float]:
    """The scores of a clip not classified: every label of `LABELS`, in its order, at 0.0."""
    return dict.fromkeys(LABELS, 0.0)


def zero_specs() -> VideoSpecs:
    """The specs of a clip not decoded: every field 0 (0.0 for the doubles)."""
    return {
        "width": 0,
        "height": 0,
        "fps": 0.0,
        "nframes": 0,
        "duration": 0.0,
        "original_width": 0,
        "original_height": 0,
        "original_fps": 0.0,
        "original_nframes": 0,
    }


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def render_result(record: ClassificationResult) -> dict[str, Any]:
    video = record["video"]
    # A record from before the rule of the module docstring gets its values here.
    specs: Mapping[str, Any] = video["specs"] or zero_specs()
    rendered_specs = {
        key: _number(specs[field]) if field in _FPS_FIELDS else specs[field]
        for field, key in _SPEC_KEYS.items()
    }
    scores = dict(record["scores"])
    for label in LABELS:
        scores.setdefault(label, 0.0)
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
        "risk": record["risk"] or UNVERIFIED_RISK,
        "labels": list(record["labels"]),
        "scores": scores,
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
    """The inverse of `render_result` (used for the golden test and for replays).

    A document from before every result had specs may carry `"specs": null`; it is read as is.
    """
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
    """A result for `request` with nothing processed yet (status pending): risk `danger`, the
    13 scores at 0.0, no labels, specs all 0 (the module docstring's rule)."""
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
        "risk": UNVERIFIED_RISK,
        "labels": [],
        "scores": zero_scores(),
        "video": {
            "videoname": request["videoname"] or videoname_of(request["video_uri"]),
            "filesize": request["filesize"] or 0,
            "specs": zero_specs(),
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
    video: Video | None = None,
) -> ClassificationResult:
    """A final result for a clip that failed: risk `danger` (a human looks at it), the 13
    scores at 0.0, no labels, `error_code`/`error_msg` set.

    `video` is the decoded clip's (videoname, filesize, specs) when decode succeeded and a later
    stage failed; without it the specs are all 0.
    """
    result = base_result(request, started_at=started_at)
    result["status"] = {"classify": ERROR, "video": DONE if video_done else ERROR}
    if video is not None:
        result["video"] = {**video, "specs": video["specs"] or zero_specs()}
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


def videoname_of(uri: str) -> str:
    """The last part of a clip's URI path: no query string or fragment (pre-signed URLs carry
    credentials there, and the name ends up in results and logs)."""
    path = uri.split("#", 1)[0].split("?", 1)[0]
    return path.rstrip("/").rsplit("/", 1)[-1]


def request_of(result: ClassificationResult) -> ClipRequest:
    """Enough of a result's clip request to address another result for the same clip (an error
    result that replaces one Kafka refused, or one at the clip's deadline)."""
    return {
        "id": result["id"],
        "tenant": result["tenant"],
        "camera_id": result["camera_id"],
        "parent_id": result["parent_id"],
        "analyse_id": result["analyse_id"],
        "video_uri": "",
        "videoname": result["video"]["videoname"],
        "filesize": result["video"]["filesize"],
        "metadata": result["metadata"],
        "created_at": result["created_at"],
    }
