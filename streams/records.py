"""The four Avro records as Python types, one `TypedDict` per record of `schemas/*.avsc`.

The `.avsc` files stay the only definition of every message: these types only let mypy check
the code that builds and reads records. `tests/test_records.py` compares every field (name,
order and type) with the schema files, so a schema change the code forgot fails in CI.
"""

from __future__ import annotations

import re
from typing import TypedDict

MetadataValue = str | int | float | bool | None

# What an id and a tenant name may be, wherever they arrive (HTTP, the requests topic, a key file).
ID_PATTERN = re.compile(r"[0-9a-f]{24}")
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ClipRequest(TypedDict):
    id: str
    tenant: str
    camera_id: str
    parent_id: str
    analyse_id: int
    video_uri: str
    videoname: str
    filesize: int | None
    metadata: dict[str, MetadataValue]
    created_at: str


class VideoSpecs(TypedDict):
    width: int
    height: int
    fps: float
    nframes: int
    duration: float
    original_width: int
    original_height: int
    original_fps: float
    original_nframes: int


class DecodedClip(TypedDict):
    request: ClipRequest
    started_at: str
    videoname: str
    filesize: int
    specs: VideoSpecs
    frames: list[bytes]
    timestamps: list[float]
    timing: dict[str, float]


class Status(TypedDict):
    classify: str
    video: str


class Video(TypedDict):
    videoname: str
    filesize: int
    specs: VideoSpecs | None


class ClassificationResult(TypedDict):
    id: str
    status: Status
    parent_id: str
    camera_id: str
    analyse_id: int
    tenant: str
    duration: int
    duration_seconds: int
    model: str
    version: str
    error_code: int
    error_msg: str
    risk: str
    labels: list[str]
    scores: dict[str, float]
    video: Video
    timing: dict[str, float]
    metadata: dict[str, MetadataValue]
    created_at: str
    started_at: str


class DeadLetter(TypedDict):
    clip_id: str | None
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    stage: str
    error_code: int
    error_msg: str
    failed_at: str
