"""Every error the HTTP API answers with: one table, one exception, one middleware.

A view raises `HttpError(KIND, message, field=...)`; `error_middleware` turns it into
`{"error": "<code>", "message": "...", ...extra}` with the kind's HTTP status. The table is the
published list (docs/api.md and api/openapi.yaml list the same codes; a test holds them equal).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    meaning: str


INVALID = ErrorKind("invalid", 400, "a field or query parameter is invalid (named in `field`)")
UNAUTHORIZED = ErrorKind("unauthorized", 401, "no valid API key")
FORBIDDEN = ErrorKind("forbidden", 403, "the body's `tenant` is not the API key's tenant")
NOT_FOUND = ErrorKind(
    "not_found", 404, "no result with that id for this tenant, or no such endpoint"
)
METHOD_NOT_ALLOWED = ErrorKind("method_not_allowed", 405, "the endpoint does not take this method")
REQUEST_TIMEOUT = ErrorKind(
    "request_timeout", 408, "the body did not arrive within CLIPGUARD_BODY_TIMEOUT_S"
)
TOO_LARGE = ErrorKind("too_large", 413, "the body or the clip is over CLIPGUARD_MAX_UPLOAD_BYTES")
UNSUPPORTED_MEDIA_TYPE = ErrorKind(
    "unsupported_media_type", 415, "the body is neither multipart/form-data nor application/json"
)
QUOTA_EXCEEDED = ErrorKind(
    "quota_exceeded",
    429,
    "the tenant's upload quota or its sync=true requests in flight are used up",
)
UNAVAILABLE = ErrorKind("unavailable", 503, "the clip could not be queued (Kafka); retry")
OWNER_UNAVAILABLE = ErrorKind(
    "owner_unavailable", 503, "the worker holding the result did not answer; retry"
)
TIMEOUT = ErrorKind("timeout", 504, "`sync=true` and no result in time; poll the `poll` URL")

ERRORS: tuple[ErrorKind, ...] = (
    INVALID,
    UNAUTHORIZED,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    REQUEST_TIMEOUT,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    QUOTA_EXCEEDED,
    UNAVAILABLE,
    OWNER_UNAVAILABLE,
    TIMEOUT,
)


class HttpError(Exception):
    def __init__(self, kind: ErrorKind, message: str, **extra: Any) -> None:
        super().__init__(f"{kind.code}: {message}")
        self.kind, self.message, self.extra = kind, message, extra

    def response(self) -> web.Response:
        body = {"error": self.kind.code, "message": self.message, **self.extra}
        return web.json_response(body, status=self.kind.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# aiohttp's own refusals (no route, wrong method, body over client_max_size) as table errors.
_AIOHTTP_STATUSES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: TOO_LARGE}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        kind = _AIOHTTP_STATUSES.get(exc.status, INVALID)
        response = HttpError(kind, exc.reason).response()
        if "Allow" in exc.headers:  # a 405 says which methods the endpoint takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response


# What ClipGuard serves. Anything else on the web server (Faust's own views, should a Faust
# upgrade turn one back on) answers 404, with or without a key.
ALLOWED_PATHS = frozenset({"/health", "/ready"})
ALLOWED_PREFIXES = ("/api/",)


@web.middleware
async def allow_list_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in ALLOWED_PATHS and not request.path.startswith(ALLOWED_PREFIXES):
        raise HttpError(NOT_FOUND, "no such endpoint")
    return await handler(request)
