"""The pipeline steps, free of Faust: message bytes in, messages to send out.

Each step takes the raw value of one Kafka message (and where it came from) and returns the
messages to produce. Agents in streams/app.py only move bytes between topics and these steps;
tests call the steps directly. Expected failures never raise out of a step: a clip that cannot
be fetched, decoded or classified becomes an error result plus a dead-letter record, and a
message that is not ours becomes a dead-letter record. Nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, AvroCodec, Record
from streams.errors import ClipError, CodecError, ErrorCode
from streams.results import (
    DONE,
    ERROR,
    PENDING,
    base_result,
    error_result,
    finish_timing,
    iso_timestamp,
)
from streams.settings import Settings
from streams.stages.classify import classify
from streams.stages.fetch import fetch
from streams.stages.frames import decode_frames, encode_frames

log = logging.getLogger(__name__)

# Logical topic names; streams/app.py maps them to real topic names.
DECODED_TOPIC, RESULTS_TOPIC, PROGRESS_TOPIC, DEAD_LETTER_TOPIC = (
    "decoded",
    "results",
    "progress",
    "deadletter",
)


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int
    key: bytes | None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Out:
    topic: str
    key: bytes
    value: bytes


def dead_letter(
    codec: AvroCodec,
    origin: Origin,
    value: bytes,
    *,
    stage: str,
    code: ErrorCode,
    message: str,
    clip_id: str | None,
) -> Out:
    record = {
        "clip_id": clip_id,
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "key": origin.key,
        "value": value,
        "stage": stage,
        "error_code": int(code),
        "error_msg": message,
        "failed_at": iso_timestamp(),
    }
    key = (clip_id or "").encode() or origin.key or b""
    return Out(DEAD_LETTER_TOPIC, key, codec.encode(DEAD_LETTER, record))


def error_outputs(
    codec: AvroCodec, request: Record, result: Record, value: bytes, origin: Origin, stage: str
) -> list[Out]:
    """An error result for the alarm router plus a dead-letter record with the original bytes."""
    key = request["id"].encode()
    return [
        Out(RESULTS_TOPIC, key, codec.encode(RESULT, result)),
        dead_letter(
            codec,
            origin,
            value,
            stage=stage,
            code=ErrorCode(result["error_code"]),
            message=result["error_msg"],
            clip_id=request["id"],
        ),
    ]


def malformed(codec: AvroCodec, origin: Origin, value: bytes, stage: str, exc: CodecError) -> Out:
    """A message we cannot read: keep it, byte for byte, on the dead-letter topic."""
    log.warning("malformed message at %s (%s stage): %s", origin, stage, exc)
    clip_id = origin.key.decode(errors="replace") if origin.key else None
    return dead_letter(
        codec, origin, value, stage=stage, code=exc.code, message=str(exc), clip_id=clip_id
    )


def _video(decoded: Record) -> Record:
    """The result's `video` object, from a decoded clip message."""
    return {
        "videoname": decoded["videoname"],
        "filesize": decoded["filesize"],
        "specs": decoded["specs"],
    }


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class DecodeStep:
    """requests -> decoded (or error result + dead letter)."""

    def __init__(self, settings: Settings, codec: AvroCodec, pool: Any) -> None:
        self.settings = settings
        self.codec = codec
        self.pool = pool

    async def __call__(self, value: bytes, origin: Origin) -> list[Out]:
        try:
            request = self.codec.decode(value, expect=REQUEST)
        except CodecError as exc:
            return [malformed(self.codec, origin, value, "intake", exc)]
        started_at = iso_timestamp()
        timing: dict[str, float] = {}
        try:
            decoded = await self._fetch_and_decode(request, timing)
        except ClipError as exc:
            message = f"clip {request['id']}: {exc}" if exc.clip_id is None else str(exc)
            log.info("clip %s failed at decode (%s): %s", request["id"], origin, message)
            result = error_result(request, exc.code, message, started_at=started_at, timing=timing)
            return error_outputs(self.codec, request, result, value, origin, "decode")
        decoded["started_at"] = started_at
        progress = base_result(request, started_at=started_at)
        progress["status"] = {"classify": PENDING, "video": DONE}
        progress["video"] = _video(decoded)
        key = request["id"].encode()
        return [
            Out(DECODED_TOPIC, key, self.codec.encode(DECODED, decoded)),
            Out(PROGRESS_TOPIC, key, self.codec.encode(RESULT, progress)),
        ]

    async def _fetch_and_decode(self, request: Record, timing: dict[str, float]) -> Record:
        uri = self._resolve_upload(request["video_uri"], request["id"])
        with tempfile.TemporaryDirectory(prefix="clipguard-fetch-") as scratch:
            start = time.perf_counter()
            fetched = await fetch(uri, self.settings, Path(scratch))
            timing["fetch"] = _ms_since(start)
            start = time.perf_counter()
            videoname = request["videoname"] or uri.rstrip("/").rsplit("/", 1)[-1]
            clip = await self.pool.decode(fetched.path, self.settings, videoname)
            timing["decode"] = _ms_since(start) - clip.encode_ms
        frames = list(clip.jpeg_frames)
        timing["encode"] = clip.encode_ms
        if not frames:  # a pool decoding to pixels: encode here, in a thread (Pillow frees the GIL)
            start = time.perf_counter()
            frames = await asyncio.get_running_loop().run_in_executor(
                None, encode_frames, clip.frames, self.settings.jpeg_quality
            )
            timing["encode"] = _ms_since(start)
        return {
            "request": request,
            "started_at": "",
            "videoname": clip.videoname,
            "filesize": clip.filesize,
            "specs": asdict(clip.specs),  # VideoSpecs' fields are the Avro record's fields
            "frames": frames,
            "timestamps": list(clip.timestamps),
            "timing": timing,
        }

    def _resolve_upload(self, uri: str, clip_id: str) -> str:
        if not uri.startswith("upload://"):
            return uri
        name = uri.removeprefix("upload://")
        if not name or "/" in name or name.startswith("."):
            raise ClipError(
                ErrorCode.SOURCE_FORBIDDEN, f"bad upload reference {uri!r}", clip_id=clip_id
            )
        return (self.settings.upload_dir / name).resolve().as_uri()


class ClassifyStep:
    """decoded -> results (or error result + dead letter)."""

    def __init__(self, codec: AvroCodec, pack: Any, policies: Any, executor: Executor) -> None:
        self.codec = codec
        self.pack = pack
        self.policies = policies
        self.executor = executor

    async def __call__(self, value: bytes, origin: Origin) -> list[Out]:
        try:
            decoded = self.codec.decode(value, expect=DECODED)
        except CodecError as exc:
            return [malformed(self.codec, origin, value, "classify", exc)]
        request = decoded["request"]
        timing = dict(decoded["timing"])
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            scores = await loop.run_in_executor(self.executor, self._classify, decoded)
        except ClipError as exc:
            code, message = exc.code, f"clip {request['id']}: {exc}"
        except Exception as exc:  # any inference failure becomes an error result, never a lost clip
            log.exception("clip %s: classification failed at %s", request["id"], origin)
            code = ErrorCode.INFERENCE_FAILED
            message = f"clip {request['id']}: classification failed: {type(exc).__name__}: {exc}"
        else:
            code, message = ErrorCode.OK, ""
        if code != ErrorCode.OK:
            timing["classify"] = _ms_since(start)
            result = error_result(
                request,
                code,
                message,
                started_at=decoded["started_at"],
                timing=timing,
                video_done=True,
            )
            return error_outputs(self.codec, request, result, value, origin, "classify")
        timing["classify"] = _ms_since(start)
        result = base_result(request, started_at=decoded["started_at"])
        result["status"] = {"classify": DONE, "video": DONE}
        result["model"] = self.pack.name
        result["version"] = self.pack.version
        result["risk"] = scores.risk
        result["labels"] = list(scores.labels)
        result["scores"] = dict(scores.scores)
        result["video"] = _video(decoded)
        finish_timing(result, timing)
        return [Out(RESULTS_TOPIC, request["id"].encode(), self.codec.encode(RESULT, result))]

    def _classify(self, decoded: Record) -> Any:
        frames = decode_frames(decoded["frames"])
        policy = self.policies.for_tenant(decoded["request"]["tenant"])
        return classify(frames, decoded["timestamps"], self.pack, policy)


class Expiry:
    """Which result keys have outlived the retention: per partition, oldest first.

    Only ids and times are kept (a few dozen bytes a result), so memory stays bounded by the
    number of results within the retention, whatever the table's store.
    """

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self._queues: dict[int, collections.deque[tuple[float, bytes]]] = collections.defaultdict(
            collections.deque
        )

    def note(self, partition: int, key: bytes, now: float) -> list[bytes]:
        """Record that `key` was stored now; return the keys of `partition` to forget."""
        queue = self._queues[partition]
        queue.append((now, key))
        expired = []
        while queue and now - queue[0][0] > self.retention_s:
            expired.append(queue.popleft()[1])
        return expired


def should_store(current: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> bool:
    """Table merge rule for at-least-once delivery.

    Progress never replaces a final result, and an error never replaces a success: a replayed
    request whose upload has since been cleaned up must not turn a good answer into an error.
    """
    if current is None:
        return True
    current_state: str = current["status"]["classify"]
    incoming_state: str = incoming["status"]["classify"]
    if current_state == DONE:
        return incoming_state == DONE
    if current_state == ERROR:
        return incoming_state in (DONE, ERROR)
    return True
