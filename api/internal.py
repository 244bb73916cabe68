"""How one worker asks another for a result it holds, without the tenant's API key.

A worker that does not own a clip id's partition forwards `GET /api/result/<id>` to the owner,
whose URL comes from the consumer group's metadata. The tenant's key must not travel there
(anyone able to join the group could advertise a URL and collect keys), so the forwarding
worker sends a token instead: HMAC-SHA256 over (tenant, clip id, expiry) with a secret that the
workers of one deployment share (`CLIPGUARD_INTERNAL_SECRET_FILE`). A token is good for one id
and one tenant for `TOKEN_TTL_S` seconds: a leaked one reads that one result, briefly.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from streams.errors import ConfigError
from streams.records import ID_PATTERN, TENANT_PATTERN

HEADER = "X-ClipGuard-Internal"
TOKEN_TTL_S = 30
_VERSION = "v1"


class InternalTokens:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ConfigError("the internal secret must be at least 32 bytes")
        self._secret, self._clock = secret, clock

    @classmethod
    def from_file(cls, path: Path) -> InternalTokens:
        return cls(load_or_create_secret(path))

    def issue(self, tenant: str, clip_id: str) -> str:
        expires = int(self._clock()) + TOKEN_TTL_S
        return f"{_VERSION}:{expires}:{clip_id}:{self._mac(tenant, clip_id, expires)}:{tenant}"

    def verify(self, token: str, clip_id: str) -> str | None:
        """The tenant a valid, unexpired token for `clip_id` speaks for; None otherwise."""
        parts = token.split(":", 4)
        if len(parts) != 5 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        _, expires_text, token_id, mac, tenant = parts
        if len(expires_text) > 12 or not ID_PATTERN.fullmatch(token_id) or token_id != clip_id:
            return None
        if not TENANT_PATTERN.fullmatch(tenant):
            return None
        expires = int(expires_text)
        if not 0 <= expires - self._clock() <= TOKEN_TTL_S + 1:
            return None
        if not hmac.compare_digest(mac, self._mac(tenant, clip_id, expires)):
            return None
        return tenant

    def _mac(self, tenant: str, clip_id: str, expires: int) -> str:
        message = f"{_VERSION}\0{tenant}\0{clip_id}\0{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def load_or_create_secret(path: Path) -> bytes:
    """The deployment's shared secret; the first worker to start creates it (0600, atomically)."""
    with contextlib.suppress(FileExistsError):
        _create(path)
    try:
        st = path.stat()
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"internal secret file {path}: cannot read it ({exc.strerror})") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"internal secret file {path} may be read by group or others; chmod 600 {path}"
        )
    try:
        secret = bytes.fromhex(data.decode("ascii"))
    except ValueError as exc:
        raise ConfigError(f"internal secret file {path}: expected 64 or more hex digits") from exc
    if len(secret) < 32:
        raise ConfigError(f"internal secret file {path}: expected 64 or more hex digits")
    return secret


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)  # atomic, and fails if another worker created it first
    finally:
        temp.unlink(missing_ok=True)
