"""The pipeline steps, free of Faust and Kafka: message bytes in, messages to send out.

Each step takes the raw value of one Kafka message (and where it came from) and returns the
messages to produce. Agents in streams/app.py only move bytes between topics and these steps;
tests call the steps directly. Expected failures never raise out of a step: a clip that cannot
be fetched, decoded or classified becomes an error result plus a dead-letter record, and a
message that is not ours becomes a dead-letter record. Nothing is lost silently.

The three steps, one per agent:
- `DecodeStep`: requests -> decoded + progress (fetch the clip, decode and sample its frames);
- `ClassifyStep`: decoded -> results (run the model pack and the policy);
- `ResultsStep`: results + progress -> the result table (the store rule, the ledger of
  deadlines and retention, waiters).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from streams.codec import DEAD_LETTER, DECODED, REQUEST, RESULT, AvroCodec
from streams.errors import ClipError, CodecError, ErrorCode
from streams.records import (
    ID_PATTERN,
    TENANT_PATTERN,
    ClassificationResult,
    ClipRequest,
    DeadLetter,
    DecodedClip,
    Video,
    VideoSpecs,
)
from streams.results import (
    DONE,
    ERROR,
    PENDING,
    base_result,
    error_result,
    finish_timing,
    is_final,
    iso_timestamp,
    request_of,
    videoname_of,
)
from streams.settings import Settings
from streams.stages.classify import ClipScores, classify
from streams.stages.fetch import fetch
from streams.stages.frames import from_jpeg
from streams.stages.pool import checked_jpeg
from streams.stages.uploads import SCHEME as UPLOAD_SCHEME
from streams.stages.uploads import UploadStore
from streams.topics import Topic

if TYPE_CHECKING:
    from streams.ledger import Ledger

log = logging.getLogger(__name__)


Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    # The message's Kafka record headers; the steps read none of them (streams/tracing.py reads
    # the trace context there).
    headers: Headers = ()

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Out:
    topic: Topic
    key: bytes
    value: bytes
    headers: Headers = ()  # Kafka record headers: (name, value) pairs, in order


# A dead letter's Kafka record headers repeat what its Avro record says, for tools that read
# headers but not Avro: Kafka Connect's dead-letter-queue names, then ClipGuard's own.
# Every value is UTF-8 text (numbers in decimal), as Kafka Connect writes them.
HEADER_TOPIC = "__connect.errors.topic"
HEADER_PARTITION = "__connect.errors.partition"
HEADER_OFFSET = "__connect.errors.offset"
HEADER_STAGE = "__connect.errors.stage"
HEADER_MESSAGE = "__connect.errors.exception.message"
HEADER_ERROR_CODE = "clipguard.error_code"
HEADER_CLIP_ID = "clipguard.clip_id"  # only when the clip id is known


def dead_letter_headers(record: DeadLetter) -> Headers:
    """The Kafka record headers of a dead letter: its Avro record's reason and origin again."""
    headers = [
        (HEADER_TOPIC, record["topic"]),
        (HEADER_PARTITION, str(record["partition"])),
        (HEADER_OFFSET, str(record["offset"])),
        (HEADER_STAGE, record["stage"]),
        (HEADER_MESSAGE, record["error_msg"]),
        (HEADER_ERROR_CODE, str(record["error_code"])),
    ]
    if record["clip_id"] is not None:
        headers.append((HEADER_CLIP_ID, record["clip_id"]))
    # "replace": a clip id guessed from a key that is not UTF-8 must not stop the dead letter.
    return tuple((name, text.encode("utf-8", errors="replace")) for name, text in headers)


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
    """A `DeadLetter` record keyed by the clip id (else the original key), with its headers."""
    record: DeadLetter = {
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
    return Out(
        Topic.DEADLETTER,
        key,
        codec.serialize(DEAD_LETTER, record),
        dead_letter_headers(record),
    )


def error_outputs(
    codec: AvroCodec,
    request: ClipRequest,
    result: ClassificationResult,
    value: bytes,
    origin: Origin,
    stage: str,
) -> list[Out]:
    """An error result for the alarm router plus a dead-letter record with the original bytes."""
    key = request["id"].encode()
    return [
        Out(Topic.RESULTS, key, codec.serialize(RESULT, result)),
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


def check_request(request: ClipRequest, origin: Origin, topic_tenant: str | None = None) -> None:
    """What a clip request must be before we act on it (CodecError: it is not one of ours).

    The id is the key of everything downstream, so it must be an id we would have made, and the
    message key must be it (or the clip's history would span partitions). On a tenant's intake
    topic, which only that tenant's principal may write, the request must name that tenant.
    """
    if not ID_PATTERN.fullmatch(request["id"]):
        raise CodecError(f"id {request['id'][:40]!r} is not 24 lowercase hex characters")
    if not TENANT_PATTERN.fullmatch(request["tenant"]):
        raise CodecError(f"tenant {request['tenant'][:70]!r} is not a valid tenant name")
    if origin.key != request["id"].encode():
        raise CodecError(f"the message key is not the clip id {request['id']}")
    if topic_tenant is not None and request["tenant"] != topic_tenant:
        raise CodecError(
            f"a request on {origin.topic} (tenant {topic_tenant}) names tenant {request['tenant']}"
        )


def undeliverable(
    codec: AvroCodec, origin: Origin, value: bytes, failed: Out, reason: str
) -> list[Out]:
    """Kafka refused one of a step's outputs for good (too large, topic invalid, not allowed).

    Retrying cannot help, so the clip is answered with an error result (when the refused output
    says which clip it was) and the input goes to the dead letters, byte for byte.
    """
    request = _request_in(codec, failed)
    clip_id = None if request is None else request["id"]
    message = f"an output for {failed.topic} was refused by Kafka: {reason}"
    letter = dead_letter(
        codec,
        origin,
        value,
        stage="deliver",
        code=ErrorCode.UNDELIVERABLE,
        message=message,
        clip_id=clip_id,
    )
    if request is None or failed.topic is Topic.DEADLETTER:
        return [letter]
    result = error_result(
        request, ErrorCode.UNDELIVERABLE, f"clip {clip_id}: {message}", started_at="", timing={}
    )
    return [Out(Topic.RESULTS, failed.key, codec.serialize(RESULT, result)), letter]


def _request_in(codec: AvroCodec, out: Out) -> ClipRequest | None:
    """The clip request behind an output of ours (enough of it to address an error result)."""
    try:
        if out.topic is Topic.DECODED:
            return codec.parse(out.value, expect=DECODED)["request"]
        if out.topic in (Topic.RESULTS, Topic.PROGRESS):
            return request_of(codec.parse(out.value, expect=RESULT))
    except CodecError:
        return None
    return None


def _video(decoded: DecodedClip) -> Video:
    """The result's `video` object, from a decoded clip message."""
    return {
        "videoname": decoded["videoname"],
        "filesize": decoded["filesize"],
        "specs": decoded["specs"],
    }


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class DecodeStep:
    """requests -> decoded + progress (or error result + dead letter)."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        pool: Any,
        uploads: UploadStore,
        intake_tenants: Mapping[str, str] | None = None,
        on_request: Callable[[ClipRequest], None] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.pool = pool
        self.uploads = uploads
        # A tenant's intake topic (only its VMS principal may write it) -> that tenant.
        self.intake_tenants = dict(intake_tenants or {})
        # Told of every request that passed check_request (the worker's metrics).
        self.on_request = on_request

    async def __call__(self, value: bytes, origin: Origin) -> list[Out]:
        try:
            request = self.codec.parse(value, expect=REQUEST)
            check_request(request, origin, self.intake_tenants.get(origin.topic))
        except CodecError as exc:
            return [malformed(self.codec, origin, value, "intake", exc)]
        if self.on_request is not None:
            self.on_request(request)
        started_at = iso_timestamp()
        timing: dict[str, float] = {}
        try:
            decoded = await self._fetch_and_decode(request, timing)
        except ClipError as exc:
            message = f"clip {request['id']}: {exc}" if exc.clip_id is None else str(exc)
            log.info("clip %s failed at decode (%s): %s", request["id"], origin, message)
            result = error_result(request, exc.code, message, started_at=started_at, timing=timing)
            return error_outputs(self.codec, request, result, value, origin, "decode")
        except Exception:  # a bug of ours: the clip still gets its answer
            log.exception("clip %s: unexpected failure at decode (%s)", request["id"], origin)
            message = f"clip {request['id']}: internal error while fetching or decoding"
            result = error_result(
                request, ErrorCode.INTERNAL, message, started_at=started_at, timing=timing
            )
            return error_outputs(self.codec, request, result, value, origin, "decode")
        decoded["started_at"] = started_at
        progress = base_result(request, started_at=started_at)
        progress["status"] = {"classify": PENDING, "video": DONE}
        progress["video"] = _video(decoded)
        key = request["id"].encode()
        return [
            Out(Topic.DECODED, key, self.codec.serialize(DECODED, decoded)),
            Out(Topic.PROGRESS, key, self.codec.serialize(RESULT, progress)),
        ]

    async def _fetch_and_decode(
        self, request: ClipRequest, timing: dict[str, float]
    ) -> DecodedClip:
        uri = request["video_uri"]
        with tempfile.TemporaryDirectory(prefix="clipguard-fetch-") as scratch:
            start = time.perf_counter()
            if uri.startswith(UPLOAD_SCHEME):  # our own store: no fetch, the tenant's folder only
                path = self.uploads.path_of(uri, request["id"], request["tenant"])
            else:
                path = (await fetch(uri, self.settings, Path(scratch))).path
            timing["fetch"] = _ms_since(start)
            start = time.perf_counter()
            videoname = request["videoname"] or videoname_of(uri)
            clip = await self.pool.decode(path, self.settings, videoname)
            timing["decode"] = _ms_since(start) - clip.encode_ms
        frames = list(clip.jpeg_frames)
        timing["encode"] = clip.encode_ms
        if not frames:  # a pool decoding to pixels: encode here, in a thread (Pillow frees the GIL)
            start = time.perf_counter()
            frames = await asyncio.get_running_loop().run_in_executor(
                None, checked_jpeg, clip.frames, self.settings.jpeg_quality, clip.videoname
            )
            timing["encode"] = _ms_since(start)
        return {
            "request": request,
            "started_at": "",
            "videoname": clip.videoname,
            "filesize": clip.filesize,
            # The stage's VideoSpecs dataclass has exactly the Avro record's fields.
            "specs": cast(VideoSpecs, asdict(clip.specs)),
            "frames": frames,
            "timestamps": list(clip.timestamps),
            "timing": timing,
        }


class ClassifyStep:
    """decoded -> results (or error result + dead letter)."""

    def __init__(self, codec: AvroCodec, pack: Any, policies: Any, executor: Executor) -> None:
        self.codec = codec
        self.pack = pack
        self.policies = policies
        self.executor = executor

    async def __call__(self, value: bytes, origin: Origin) -> list[Out]:
        try:
            decoded = self.codec.parse(value, expect=DECODED)
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
        timing["classify"] = _ms_since(start)
        if code != ErrorCode.OK:
            result = error_result(
                request,
                code,
                message,
                started_at=decoded["started_at"],
                timing=timing,
                video_done=True,
                video=_video(decoded),
            )
            return error_outputs(self.codec, request, result, value, origin, "classify")
        result = base_result(request, started_at=decoded["started_at"])
        result["status"] = {"classify": DONE, "video": DONE}
        result["model"] = self.pack.name
        result["version"] = self.pack.version
        result["risk"] = scores.risk
        result["labels"] = list(scores.labels)
        result["scores"] = dict(scores.scores)
        result["video"] = _video(decoded)
        finish_timing(result, timing)
        return [Out(Topic.RESULTS, request["id"].encode(), self.codec.serialize(RESULT, result))]

    def _classify(self, decoded: DecodedClip) -> ClipScores:
        frames = from_jpeg(decoded["frames"])
        policy = self.policies.for_tenant(decoded["request"]["tenant"])
        return classify(frames, decoded["timestamps"], self.pack, policy)


class ResultsStep:
    """results + progress -> the result table (or a dead letter).

    The only writer of the table (Faust allows table writes from one agent instance). It keeps
    the better of what the table holds and what arrives (`should_store`), forgets results past
    the retention, and tells `on_final` about every final result (the HTTP API's waiters).
    """

    def __init__(
        self,
        codec: AvroCodec,
        table: MutableMapping[bytes, bytes],
        ledger: Ledger,
        on_final: Callable[[bytes, bytes], None],
        clock: Callable[[], float] = time.time,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.codec = codec
        self.table = table
        self.ledger = ledger
        self.on_final = on_final
        self.clock = clock
        # False while this worker may have lost its partitions (streams/fence.py): a zombie's
        # table write would make a later recovery skip the new owner's records.
        self.may_write = may_write

    async def __call__(self, value: bytes, origin: Origin) -> list[Out]:
        key = origin.key
        try:
            if not key:
                raise CodecError("a result without a key cannot be stored")
            incoming = self.codec.parse(value, expect=RESULT)
        except CodecError as exc:
            return [malformed(self.codec, origin, value, "results", exc)]
        if not self.may_write():
            log.info("%s: fenced (this worker stalled); the partition's owner stores it", origin)
            return []
        current = self.table.get(key)
        current_record = None if current is None else self.codec.parse(current, expect=RESULT)
        if current_record is not None and current_record["tenant"] != incoming["tenant"]:
            log.warning(
                "%s: a result for %s claims tenant %r, but the id belongs to another tenant",
                origin,
                incoming["id"],
                incoming["tenant"],
            )
            return [
                dead_letter(
                    self.codec,
                    origin,
                    value,
                    stage="results",
                    code=ErrorCode.ID_CONFLICT,
                    message=f"id {incoming['id']} already belongs to another tenant",
                    clip_id=incoming["id"],
                )
            ]
        if should_store(current_record, incoming):
            self.table[key] = value
            # Expired keys share this message's partition, so their deletions land in the
            # changelog partition Faust writes for this message.
            for old in self.ledger.stored(origin.partition, key, incoming, self.clock()):
                self.table.pop(old, None)
        if is_final(incoming):
            self.on_final(key, value)
        return []


def should_store(current: ClassificationResult | None, incoming: ClassificationResult) -> bool:
    """Table merge rule for at-least-once delivery.

    Progress never replaces a final result, and an error never replaces a success: a replayed
    request whose upload has since been cleaned up must not turn a good answer into an error.
    """
    if current is None:
        return True
    current_state = current["status"]["classify"]
    incoming_state = incoming["status"]["classify"]
    if current_state == DONE:
        return incoming_state == DONE
    if current_state == ERROR:
        return incoming_state in (DONE, ERROR)
    return True
