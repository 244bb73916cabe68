"""HTTP API: POST /api/classify, GET /api/result/{id}, /health, /ready.

The views are plain aiohttp handlers over a `ClipService` (the running worker: see
streams/service.py `WorkerService`). `install()` adds them, with the error and authentication
middlewares, to an aiohttp Application: Faust's own web server in a worker (streams/wiring.py),
or a bare Application in tests. Errors are raised as `api.errors.HttpError`, never built here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from aiohttp import BodyPartReader, ClientError, ClientTimeout, web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from api import internal
from api.auth import FROM_PEER, KEYS, TENANT, TOKENS, ApiKeys, auth_middleware
from api.errors import (
    FORBIDDEN,
    INVALID,
    NOT_FOUND,
    OWNER_UNAVAILABLE,
    QUOTA_EXCEEDED,
    REQUEST_TIMEOUT,
    TIMEOUT,
    TOO_LARGE,
    UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    HttpError,
    allow_list_middleware,
    error_middleware,
)
from streams.errors import QueueUnavailable
from streams.records import ID_PATTERN, ClassificationResult, ClipRequest
from streams.results import (
    PENDING,
    base_result,
    iso_timestamp,
    new_clip_id,
    render_result,
    result_from_json,
)
from streams.settings import Settings
from streams.stages.uploads import Upload, UploadStore

log = logging.getLogger(__name__)

OPTIONAL_TEXT = ("camera_id", "parent_id", "videoname")
# file:// is for trusted producers on the requests topic only: over HTTP it would let a tenant
# read files of the media roots.
ALLOWED_URL_SCHEMES = ("http://", "https://")
REMOTE_POLL_S = 0.1
MAX_JSON_BYTES = 64 * 1024  # a JSON body, a form's text field: metadata is at most 16 KiB


class ClipService(Protocol):
    """What the views need from the running worker (streams/service.py `WorkerService`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def http(self) -> Any: ...  # an aiohttp ClientSession, to reach other workers

    async def submit(self, request: ClipRequest, pending: ClassificationResult) -> None:
        """Returns once the clip is durably queued; QueueUnavailable when it cannot be."""
        ...

    def owner_url(self, clip_id: str) -> str | None: ...
    def local(self, clip_id: str) -> ClassificationResult | None: ...
    async def wait_local(self, clip_id: str, timeout: float) -> ClassificationResult | None: ...
    def readiness(self) -> dict[str, bool]: ...


class SyncMetrics(Protocol):
    """What the views report about sync=true requests (streams/metrics.py `Metrics`)."""

    def sync_started(self) -> None: ...
    def sync_finished(self) -> None: ...
    def sync_timed_out(self) -> None: ...


class _NoMetrics:
    def sync_started(self) -> None:
        pass

    def sync_finished(self) -> None:
        pass

    def sync_timed_out(self) -> None:
        pass


SERVICE = web.AppKey("clipguard_service", ClipService)
METRICS = web.AppKey("clipguard_metrics", SyncMetrics)
UPLOADS = web.AppKey("clipguard_uploads", UploadStore)
SYNC_IN_FLIGHT = web.AppKey("clipguard_sync_in_flight", collections.Counter[str])


def install(
    app: web.Application,
    service: ClipService,
    settings: Settings,
    metrics: SyncMetrics | None = None,
) -> None:
    app[SERVICE] = service
    app[METRICS] = metrics if metrics is not None else _NoMetrics()
    app[KEYS] = ApiKeys.load(settings.api_keys_file)
    app[TOKENS] = internal.InternalTokens.from_file(settings.internal_secret_file)
    app[UPLOADS] = UploadStore(settings.upload_dir)
    app[SYNC_IN_FLIGHT] = collections.Counter()
    # The first is the outermost: errors of the later ones become JSON too.
    app.middlewares.extend([error_middleware, allow_list_middleware, auth_middleware])
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/api/classify", classify)
    app.router.add_get("/api/result/{id}", get_result)
    app.router.add_get("/api/openapi.yaml", openapi)


def invalid(field: str, message: str) -> HttpError:
    return HttpError(INVALID, message, field=field)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    checks = request.app[SERVICE].readiness()
    ok = all(checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(Path(__file__).parent / "openapi.yaml")


async def get_result(request: web.Request) -> web.Response:
    tenant = request[TENANT]
    clip_id = request.match_info["id"]
    service = request.app[SERVICE]
    not_found = HttpError(NOT_FOUND, f"no result with id {clip_id}")
    if not ID_PATTERN.fullmatch(clip_id):
        raise not_found
    owner = None if request.get(FROM_PEER) else service.owner_url(clip_id)
    if owner is not None:
        return await _forward(service, owner, request, clip_id)
    record = service.local(clip_id)
    if record is None or record["tenant"] != tenant:  # another tenant's id looks unknown
        raise not_found
    return web.json_response(render_result(record))


async def _forward(
    service: ClipService, owner: str, request: web.Request, clip_id: str
) -> web.Response:
    try:
        async with service.http.get(
            f"{owner}{request.rel_url.path}",
            headers=_peer_headers(request, clip_id),
            timeout=ClientTimeout(total=10),
        ) as response:
            body = await response.read()
            return web.Response(body=body, status=response.status, content_type="application/json")
    except (ClientError, TimeoutError) as exc:
        log.warning("owner %s of %s did not answer: %s", owner, request.rel_url.path, exc)
        raise HttpError(OWNER_UNAVAILABLE, OWNER_UNAVAILABLE.meaning) from exc


async def classify(request: web.Request) -> web.Response:
    tenant = request[TENANT]
    service = request.app[SERVICE]
    settings = service.settings
    _check_envelope(request, settings)
    sync = request.query.get("sync", "false") == "true"
    clip_id = new_clip_id()
    with _sync_slot(request, tenant, sync):
        stored: list[Upload] = []  # the upload, to remove again if the request fails
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                fields, uri = await _read_body(request, clip_id, tenant, stored)
            clip = _clip_request(clip_id, tenant, fields, uri)
            pending = base_result(clip, started_at="")
            await service.submit(clip, pending)
        except TimeoutError as exc:
            _discard(request, stored)
            raise HttpError(
                REQUEST_TIMEOUT, f"no whole body within {settings.body_timeout_s} s"
            ) from exc
        except QueueUnavailable as exc:
            _discard(request, stored)
            log.error("could not queue clip %s: %s", clip_id, exc)
            raise HttpError(UNAVAILABLE, UNAVAILABLE.meaning) from exc
        except BaseException:  # a refusal, a client gone mid-upload, a bug: keep nothing
            _discard(request, stored)
            raise
        poll = f"/api/result/{clip_id}"
        if not sync:
            return web.json_response(
                {"id": clip_id, "status": pending["status"], "poll": poll}, status=202
            )
        record = await _wait(service, request, clip_id, tenant)
    if record is None:
        request.app[METRICS].sync_timed_out()
        raise HttpError(
            TIMEOUT,
            f"no result within {settings.sync_timeout_s} s; poll {poll}",
            id=clip_id,
            poll=poll,
            status={"classify": PENDING, "video": PENDING},
        )
    return web.json_response(render_result(record))


def _check_envelope(request: web.Request, settings: Settings) -> None:
    """What can be refused before a byte of the body is read."""
    if request.content_length is not None and request.content_length > settings.max_upload_bytes:
        raise HttpError(TOO_LARGE, f"body over the limit of {settings.max_upload_bytes} bytes")
    # aiohttp would inflate a gzip or deflate body behind the size checks (a 100 KB request
    # can carry a 50 MB clip); clips are compressed already, so no content coding is taken.
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HttpError(
            UNSUPPORTED_MEDIA_TYPE, "Content-Encoding is not accepted; send the body as it is"
        )
    unknown = set(request.query) - {"sync"}
    if unknown:
        raise invalid(sorted(unknown)[0][:64], "unknown query parameter")
    if request.query.get("sync", "false") not in ("true", "false"):
        raise invalid("sync", "sync must be true or false")


@contextlib.contextmanager
def _sync_slot(request: web.Request, tenant: str, sync: bool) -> Iterator[None]:
    """Bound a tenant's sync=true requests in flight on this worker (429 over the bound)."""
    if not sync:
        yield
        return
    in_flight = request.app[SYNC_IN_FLIGHT]
    limit = request.app[SERVICE].settings.tenant_sync_limit
    if in_flight[tenant] >= limit:
        raise HttpError(
            QUOTA_EXCEEDED, f"{limit} sync=true requests of this tenant are in flight; retry"
        )
    in_flight[tenant] += 1
    metrics = request.app[METRICS]
    metrics.sync_started()
    try:
        yield
    finally:
        metrics.sync_finished()
        in_flight[tenant] -= 1
        if not in_flight[tenant]:
            del in_flight[tenant]


async def _read_body(
    request: web.Request, clip_id: str, tenant: str, stored: list[Upload]
) -> tuple[dict[str, Any], str]:
    if request.content_type == "multipart/form-data":
        try:
            return await _read_multipart(request, clip_id, tenant, stored)
        except (ValueError, HttpProcessingError) as exc:  # aiohttp: a malformed body
            raise invalid("body", f"malformed multipart body: {exc}") from exc
    if request.content_type == "application/json":
        return await _read_json(request)
    raise HttpError(
        UNSUPPORTED_MEDIA_TYPE,
        "send multipart/form-data (a video file) or application/json (video_url)",
    )


def _discard(request: web.Request, stored: list[Upload]) -> None:
    for upload in stored:
        request.app[UPLOADS].discard(upload)


async def _wait(
    service: ClipService, request: web.Request, clip_id: str, tenant: str
) -> ClassificationResult | None:
    """Wait for the final result: locally when this worker owns the id, else by polling the owner.

    Ownership can move during a rebalance, so it is checked again after each slice of waiting.
    A result under another tenant's name is never returned (the table refuses such records, but
    the answer is checked here too).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.settings.sync_timeout_s
    while (left := deadline - loop.time()) > 0:
        owner = service.owner_url(clip_id)
        if owner is None:
            record = await service.wait_local(clip_id, min(left, 1.0))
            if record is not None and record["tenant"] == tenant:
                return record
            if record is not None:
                await asyncio.sleep(min(REMOTE_POLL_S, max(left, 0)))
            continue
        record = await _poll_owner(service, owner, request, clip_id)
        if record is not None and record["tenant"] == tenant:
            return record
        await asyncio.sleep(min(REMOTE_POLL_S, max(left, 0)))
    return None


async def _poll_owner(
    service: ClipService, owner: str, request: web.Request, clip_id: str
) -> ClassificationResult | None:
    headers = _peer_headers(request, clip_id)
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


def _peer_headers(request: web.Request, clip_id: str) -> dict[str, str]:
    """A short-lived token for this one id and tenant, never the tenant's own API key."""
    return {internal.HEADER: request.app[TOKENS].issue(request[TENANT], clip_id)}


def _parse_json(text: bytes | str, field: str) -> Any:
    """JSON from a client: any way it fails (syntax, nesting depth, a 5,000-digit number) is a 400."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise invalid(field, f"not valid JSON: {str(exc)[:200]}") from exc


async def _read_json(request: web.Request) -> tuple[dict[str, Any], str]:
    body = _parse_json(await _read_capped(request.content.read, MAX_JSON_BYTES, "body"), "body")
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    unknown = set(body) - {"tenant", "video_url", "metadata", "analyse_id", *OPTIONAL_TEXT}
    if unknown:
        raise invalid(str(sorted(unknown)[0])[:64], "unknown field")
    url = body.get("video_url")
    if not isinstance(url, str):
        raise invalid("video_url", "required: an http:// or https:// URL")
    _check_url(url)
    for name in ("tenant", *OPTIONAL_TEXT):
        if name in body and not isinstance(body[name], str):
            raise invalid(name, "must be a string")
    analyse_id = body.get("analyse_id", 0)
    if not isinstance(analyse_id, int) or isinstance(analyse_id, bool):
        raise invalid("analyse_id", "must be an integer")
    return body, url


async def _read_multipart(
    request: web.Request, clip_id: str, tenant: str, stored: list[Upload]
) -> tuple[dict[str, Any], str]:
    reader = await request.multipart()
    fields: dict[str, Any] = {}
    uri = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            raise invalid("body", "nested multipart is not supported")
        if part.filename is not None:
            if part.name not in ("video", "file"):
                raise invalid(part.name[:64], "unexpected file field (send the clip as 'video')")
            if uri is not None:
                raise invalid(part.name[:64], "only one video per request")
            uri, size = await _store_upload(request, part, clip_id, tenant, stored)
            fields["videoname"] = fields.get("videoname") or Path(part.filename).name[:255]
            fields["filesize"] = size
        else:
            if part.name not in ("tenant", "metadata", "analyse_id", *OPTIONAL_TEXT):
                raise invalid(part.name[:64], "unknown field")
            text = await _read_capped(part.read_chunk, MAX_JSON_BYTES, part.name[:64])
            fields[part.name] = text.decode("utf-8", "replace")
    if uri is None:
        raise invalid("video", "required: the clip as a file field named 'video'")
    if "metadata" in fields:
        fields["metadata"] = _parse_json(fields["metadata"], "metadata")
    return fields, uri


async def _read_capped(read: Callable[[int], Awaitable[bytes]], limit: int, field: str) -> bytes:
    """A small body or text field, refused (413) past `limit` bytes instead of held in memory."""
    data = bytearray()
    while chunk := await read(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise HttpError(TOO_LARGE, f"{field} is over the limit of {limit} bytes", field=field)
    return bytes(data)


def _check_url(url: str) -> None:
    """The clip URL as the HTTP client will read it (yarl): http(s), a host, nothing odd.

    The fetch stage checks again, at each hop, where the URL really leads.
    """
    if len(url) > 2048:
        raise invalid("video_url", "longer than 2048 characters")
    if not url.startswith(ALLOWED_URL_SCHEMES):
        raise invalid("video_url", "required: an http:// or https:// URL")
    try:
        parsed = URL(url)
        host = parsed.host
    except (ValueError, TypeError, UnicodeError) as exc:
        raise invalid("video_url", "not a valid URL") from exc
    if not host or parsed.scheme not in ("http", "https"):
        raise invalid("video_url", "required: an http:// or https:// URL with a host")
    if not url.isascii() or not host.isascii():
        raise invalid("video_url", "use an ASCII URL (IDNA host names, percent-encoded paths)")
    if parsed.user is not None or parsed.password is not None:
        raise invalid("video_url", "credentials in the URL are not accepted")


async def _store_upload(
    request: web.Request, part: BodyPartReader, clip_id: str, tenant: str, stored: list[Upload]
) -> tuple[str, int]:
    settings = request.app[SERVICE].settings
    limit = settings.max_upload_bytes
    store = request.app[UPLOADS]
    # Per worker and approximate under concurrent uploads: a bound, not an account.
    room = settings.tenant_upload_quota_bytes - store.usage(tenant)
    upload = store.new(clip_id, tenant, part.filename or "")
    stored.append(upload)
    size = 0
    try:
        with upload.path.open("wb") as out:
            while chunk := await part.read_chunk(256 * 1024):
                size += len(chunk)
                if size > limit:
                    raise HttpError(TOO_LARGE, f"over the limit of {limit} bytes", field="video")
                if size > room:
                    raise HttpError(
                        QUOTA_EXCEEDED,
                        "the tenant's stored uploads would pass its quota of "
                        f"{settings.tenant_upload_quota_bytes} bytes; retry when older ones expire",
                        field="video",
                    )
                out.write(chunk)
    except BaseException:
        store.discard(upload)
        raise
    if size == 0:
        store.discard(upload)
        raise invalid("video", "the file is empty")
    return upload.uri, size


def _clip_request(clip_id: str, tenant: str, fields: dict[str, Any], uri: str) -> ClipRequest:
    body_tenant = fields.get("tenant")
    if body_tenant is not None and body_tenant != tenant:
        raise HttpError(FORBIDDEN, "does not match the API key's tenant", field="tenant")
    metadata = fields.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise invalid("metadata", "must be a JSON object of strings")
    if len(metadata) > 64 or any(len(v) > 200 for v in metadata.values()):
        raise invalid("metadata", "at most 64 entries of at most 200 characters each")
    if len(json.dumps(metadata)) > 16 * 1024:
        raise invalid("metadata", "larger than 16 KiB")
    try:
        analyse_id = int(fields.get("analyse_id", 0))
    except (TypeError, ValueError) as exc:
        raise invalid("analyse_id", "must be an integer") from exc
    if not 0 <= analyse_id < 2**63:
        raise invalid("analyse_id", "must be between 0 and 2^63-1")
    text = {}
    for name in OPTIONAL_TEXT:
        value = fields.get(name, "")
        if not isinstance(value, str) or len(value) > 255:
            raise invalid(name, "must be a string of at most 255 characters")
        text[name] = value
    parent = text["parent_id"] or "0" * 24
    if not ID_PATTERN.fullmatch(parent):
        raise invalid("parent_id", "must be 24 lowercase hex characters")
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
