"""API keys: every request carries one; each key belongs to exactly one tenant.

Keys live in a JSON file (settings.api_keys_file):
    {"keys": [{"key": "cg_...", "tenant": "acme"}, ...]}
Only SHA-256 digests are kept in memory, and comparisons are constant-time. `auth_middleware`
checks the key of every `/api` request (but the OpenAPI document) and puts the tenant on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from api.errors import UNAUTHORIZED, HttpError
from streams.errors import ConfigError

TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, tenants_by_key: dict[str, str]) -> None:
        for tenant in tenants_by_key.values():
            if not TENANT_PATTERN.fullmatch(tenant):
                raise ConfigError(
                    f"tenant name {tenant!r} is not allowed ({TENANT_PATTERN.pattern})"
                )
        self._by_digest = [(_digest(k), t) for k, t in tenants_by_key.items()]

    def tenant_of(self, key: str | None) -> str | None:
        if not key:
            return None
        digest = _digest(key)
        found = None
        for known, tenant in self._by_digest:  # no early exit: same time for every key
            if hmac.compare_digest(known, digest):
                found = tenant
        return found

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"API key file {path} is missing; create one with `clipguard keys add TENANT`"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"API key file {path} is not valid JSON: {exc}") from exc
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(
                f'API key file {path} must be {{"keys": [{{"key": ..., "tenant": ...}}]}}'
            )
        tenants = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != {"key", "tenant"}:
                raise ConfigError(
                    f"API key file {path}: entry {i} must have exactly key and tenant"
                )
            tenants[str(entry["key"])] = str(entry["tenant"])
        return cls(tenants)


def add_key(path: Path, tenant: str) -> str:
    """Create a new key for `tenant` in the key file (created if missing) and return it."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ConfigError(f"tenant name {tenant!r} is not allowed ({TENANT_PATTERN.pattern})")
    doc = json.loads(path.read_text()) if path.exists() else {"keys": []}
    key = "cg_" + secrets.token_urlsafe(24)
    doc["keys"].append({"key": key, "tenant": tenant})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    path.chmod(0o600)
    return key


KEYS = web.AppKey("clipguard_keys", ApiKeys)
TENANT = web.RequestKey("clipguard_tenant", str)
PUBLIC_PATHS = frozenset({"/api/openapi.yaml"})


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    return key or request.headers.get("X-API-Key")


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        tenant = request.app[KEYS].tenant_of(_presented_key(request))
        if tenant is None:
            raise HttpError(UNAUTHORIZED, "a valid API key is required (Authorization: Bearer KEY)")
        request[TENANT] = tenant
    return await handler(request)
