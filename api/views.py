"""HTTP API: POST /api/classify, GET /api/result/{id}, /health, /ready.

The views are plain aiohttp handlers over a `ClipService` (the running worker, see
streams/app.py `FaustClipService`). `install()` adds them to an aiohttp Application: Faust's own
web server in a worker, or a bare Application in tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any, Protocol

from aiohttp import BodyPartReader, ClientError, ClientTimeout, web
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka.errors import KafkaError

from api.auth import ApiKeys
from streams.codec import AvroCodec, Record
from streams.results import (
    PENDING,
    base_result,
    iso_timestamp,
    new_clip_id,
    render_result,
    result_from_json,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[0-9a-f]{24}")
FORWARDED = "X-ClipGuard-Forwarded"
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".m4v", ".ts", ".webm", ".mpg", ".mpeg", ".3gp"}
OPTIONAL_TEXT = ("camera_id", "parent_id", "videoname")
# file:// is for trusted producers on the requests topic only: over HTTP it would let one tenant
# name another tenant's upload (the upload store is under a media root).
ALLOWED_URL_SCHEMES = ("http://", "https://")
REMOTE_POLL_S = 0.1


class ClipService(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def codec(self) -> AvroCodec: ...
    @property
    def http(self) -> Any: ...  # an aiohttp ClientSession, to reach other workers

    async def submit(self, request: Record, pending: Record) -> None: ...
    def owner_url(self, clip_id: str) -> str | None: ...
    def local(self, clip_id: str) -> Record | None: ...
    async def wait_local(self, clip_id: str, timeout: float) -> Record | None: ...
    def readiness(self) -> dict[str, bool]: ...


SERVICE = web.AppKey("clipguard_service", ClipService)
KEYS = web.AppKey("clipguard_keys", ApiKeys)


def error(http_status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=http_status)


class BadRequest(Exception):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


def install(app: web.Application, service: ClipService, settings: Settings) -> None:
    app[SERVICE] = service
    app[KEYS] = ApiKeys.load(settings.api_keys_file)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/api/classify", classify)
    app.router.add_get("/api/result/{id}", get_result)
    app.router.add_get("/api/openapi.yaml", openapi)


def _tenant(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    key = key or request.headers.get("X-API-Key")
    return request.app[KEYS].tenant_of(key)


def _unauthorized() -> web.Response:
    return error(401, "unauthorized", "a valid API key is required (Authorization: Bearer KEY)")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    checks = request.app[SERVICE].readiness()
    ok = all(checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(Path(__file__).parent / "openapi.yaml")


async def get_result(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    if tenant is None:
        return _unauthorized()
    clip_id = request.match_info["id"]
    service = request.app[SERVICE]
    not_found = error(404, "not_found", f"no result with id {clip_id}")
    if not ID_PATTERN.fullmatch(clip_id):
        return not_found
    owner = None if FORWARDED in request.headers else service.owner_url(clip_id)
    if owner is not None:
        return await _forward(service, owner, request)
    record = service.local(clip_id)
    if record is None or record["tenant"] != tenant:  # another tenant's id looks unknown
        return not_found
    return web.json_response(render_result(record))


async def _forward(service: ClipService, owner: str, request: web.Request) -> web.Response:
    try:
        async with service.http.get(
            f"{owner}{request.rel_url.path}",
            headers=_forward_headers(request),
            timeout=ClientTimeout(total=10),
        ) as response:
            body = await response.read()
            return web.Response(body=body, status=response.status, content_type="application/json")
    except (ClientError, TimeoutError) as exc:
        log.warning("owner %s of %s did not answer: %s", owner, request.rel_url.path, exc)
        return error(
            503, "owner_unavailable", "the worker holding this result did not answer; retry"
        )


async def classify(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    if tenant is None:
        return _unauthorized()
    service = request.app[SERVICE]
    settings = service.settings
    if request.content_length is not None and request.content_length > settings.max_upload_bytes:
        return error(413, "too_large", f"body over the limit of {settings.max_upload_bytes} bytes")
    unknown = set(request.query) - {"sync"}
    if unknown:
        return error(400, "invalid", "unknown query parameter", field=sorted(unknown)[0])
    sync = request.query.get("sync", "false")
    if sync not in ("true", "false"):
        return error(400, "invalid", "sync must be true or false", field="sync")
    sync_wanted = sync == "true"
    clip_id = new_clip_id()
    stored: list[Path] = []  # the upload, to remove again if the request is refused
    try:
        if request.content_type == "multipart/form-data":
            try:
                fields, uri = await _read_multipart(request, settings, clip_id, stored)
            except (ValueError, HttpProcessingError) as exc:  # aiohttp: a malformed body
                raise BadRequest("body", f"malformed multipart body: {exc}") from exc
        elif request.content_type == "application/json":
            fields, uri = await _read_json(request)
        else:
            return error(
                415,
                "unsupported_media_type",
                "send multipart/form-data (a video file) or application/json (video_url)",
            )
        clip = _clip_request(clip_id, tenant, fields, uri)
    except BadRequest as exc:
        _remove(stored)
        status = exc.status
        code = "too_large" if status == 413 else "forbidden" if status == 403 else "invalid"
        return error(status, code, exc.message, field=exc.field)
    pending = base_result(clip, started_at="")
    try:
        await service.submit(clip, pending)
    except (KafkaError, TimeoutError) as exc:
        _remove(stored)
        log.error("could not queue clip %s: %s", clip_id, exc)
        return error(503, "unavailable", "the clip could not be queued (Kafka); retry")
    poll = f"/api/result/{clip_id}"
    if not sync_wanted:
        return web.json_response(
            {"id": clip_id, "status": pending["status"], "poll": poll}, status=202
        )
    record = await _wait(service, request, clip_id)
    if record is None:
        return error(
            504,
            "timeout",
            f"no result within {settings.sync_timeout_s} s; poll {poll}",
            id=clip_id,
            poll=poll,
            status={"classify": PENDING, "video": PENDING},
        )
    return web.json_response(render_result(record))


async def _wait(service: ClipService, request: web.Request, clip_id: str) -> Record | None:
    """Wait for the final result: locally when this worker owns the id, else by polling the owner.

    Ownership can move during a rebalance, so it is checked again after each slice of waiting.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.settings.sync_timeout_s
    while (left := deadline - loop.time()) > 0:
        owner = service.owner_url(clip_id)
        if owner is None:
            record = await service.wait_local(clip_id, min(left, 1.0))
            if record is not None:
                return record
            continue
        record = await _poll_owner(service, owner, request, clip_id)
        if record is not None:
            return record
        await asyncio.sleep(min(REMOTE_POLL_S, max(left, 0)))
    return None


async def _poll_owner(
    service: ClipService, owner: str, request: web.Request, clip_id: str
) -> Record | None:
    headers = _forward_headers(request)
    try:
        async with service.http.get(
            f"{owner}/api/result/{clip_id}", headers=headers, timeout=ClientTimeout(total=5)
        ) as response:
            if response.status != 200:
                return None
            doc = await response.json()
    except (ClientError, TimeoutError) as exc:
        log.info("polling owner %s for %s: %s", owner, clip_id, exc)
        return None
    return result_from_json(doc) if doc["status"]["classify"] != PENDING else None


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "X-API-Key")}
    headers[FORWARDED] = "1"
    return headers


async def _read_json(request: web.Request) -> tuple[dict[str, Any], str]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("body", f"not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = set(body) - {"tenant", "video_url", "metadata", "analyse_id", *OPTIONAL_TEXT}
    if unknown:
        raise BadRequest(sorted(unknown)[0], "unknown field")
    url = body.get("video_url")
    if not isinstance(url, str) or not url.startswith(ALLOWED_URL_SCHEMES):
        raise BadRequest("video_url", "required: an http:// or https:// URL")
    if len(url) > 2048:
        raise BadRequest("video_url", "longer than 2048 characters")
    for name in ("tenant", *OPTIONAL_TEXT):
        if name in body and not isinstance(body[name], str):
            raise BadRequest(name, "must be a string")
    analyse_id = body.get("analyse_id", 0)
    if not isinstance(analyse_id, int) or isinstance(analyse_id, bool):
        raise BadRequest("analyse_id", "must be an integer")
    return body, url


async def _read_multipart(
    request: web.Request, settings: Settings, clip_id: str, stored: list[Path]
) -> tuple[dict[str, Any], str]:
    reader = await request.multipart()
    fields: dict[str, Any] = {}
    uri = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            raise BadRequest("body", "nested multipart is not supported")
        if part.filename is not None:
            if part.name not in ("video", "file"):
                raise BadRequest(part.name, "unexpected file field (send the clip as 'video')")
            if uri is not None:
                raise BadRequest(part.name, "only one video per request")
            uri, size = await _store_upload(part, settings, clip_id, stored)
            fields["videoname"] = fields.get("videoname") or Path(part.filename).name[:255]
            fields["filesize"] = size
        else:
            if part.name not in ("tenant", "metadata", "analyse_id", *OPTIONAL_TEXT):
                raise BadRequest(part.name, "unknown field")
            fields[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")
    if uri is None:
        raise BadRequest("video", "required: the clip as a file field named 'video'")
    if "metadata" in fields:
        try:
            fields["metadata"] = json.loads(fields["metadata"])
        except json.JSONDecodeError as exc:
            raise BadRequest("metadata", f"not valid JSON: {exc}") from exc
    return fields, uri


async def _store_upload(
    part: BodyPartReader, settings: Settings, clip_id: str, stored: list[Path]
) -> tuple[str, int]:
    suffix = Path(part.filename or "").suffix.lower()
    name = clip_id + (suffix if suffix in VIDEO_EXTENSIONS else "")
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    path = settings.upload_dir / name
    stored.append(path)
    size = 0
    try:
        with path.open("wb") as out:
            while chunk := await part.read_chunk(256 * 1024):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise BadRequest(
                        "video", f"over the limit of {settings.max_upload_bytes} bytes", 413
                    )
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise BadRequest("video", "the file is empty")
    return f"upload://{name}", size


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _clip_request(clip_id: str, tenant: str, fields: dict[str, Any], uri: str) -> Record:
    body_tenant = fields.get("tenant")
    if body_tenant is not None and body_tenant != tenant:
        raise BadRequest("tenant", "does not match the API key's tenant", 403)
    metadata = fields.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise BadRequest("metadata", "must be a JSON object of strings")
    if len(metadata) > 64 or any(len(v) > 200 for v in metadata.values()):
        raise BadRequest("metadata", "at most 64 entries of at most 200 characters each")
    if len(json.dumps(metadata)) > 16 * 1024:
        raise BadRequest("metadata", "larger than 16 KiB")
    try:
        analyse_id = int(fields.get("analyse_id", 0))
    except (TypeError, ValueError) as exc:
        raise BadRequest("analyse_id", "must be an integer") from exc
    if not 0 <= analyse_id < 2**63:
        raise BadRequest("analyse_id", "must be between 0 and 2^63-1")
    text = {}
    for name in OPTIONAL_TEXT:
        value = fields.get(name, "")
        if not isinstance(value, str) or len(value) > 255:
            raise BadRequest(name, "must be a string of at most 255 characters")
        text[name] = value
    parent = text["parent_id"] or "0" * 24
    if not ID_PATTERN.fullmatch(parent):
        raise BadRequest("parent_id", "must be 24 lowercase hex characters")
    return {
        "id": clip_id,
        "tenant": tenant,
        "camera_id": text["camera_id"],
        "parent_id": parent,
        "analyse_id": analyse_id,
        "video_uri": uri,
        "videoname": text["videoname"],
        "filesize": fields.get("filesize"),
        "metadata": metadata,
        "created_at": iso_timestamp(),
    }
