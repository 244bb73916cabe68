"""API keys: every request carries one; each key belongs to exactly one tenant.

A key is `cg_<id>_<secret>`: the id (8 hex characters) is public and names the key in
`clipguard keys list|revoke`; the secret is 24 random bytes (32 URL-safe characters). A key is
shown once, when it is created; the key file (settings.api_keys_file) keeps only its digest:

    {"version": 2,
     "keys": [{"id": "3f9a0c1e", "tenant": "acme", "sha256": "<64 hex digits>",
               "created_at": "2025-05-01T12:00:00Z"}]}

The digest is a plain SHA-256 of the whole key, on purpose: a key carries 192 random bits, so
there is nothing to guess that a slow password hash (bcrypt, scrypt) would protect; those exist
for low-entropy passwords. Version 1 files of older installs, `{"keys": [{"key": "cg_...",
"tenant": "acme"}]}` (plaintext keys), are still read (digested in memory, with an id derived
from the key and `created_at` null); every command that writes the file writes version 2.

The file is written atomically (a 0600 temp file in the same directory, fsync, rename), under a
lock on its directory so that two `clipguard keys` commands do not lose each other's change, and
refused, at start and on reload, when group or others may read or write it. A symlink is
followed (secret managers such as Kubernetes volumes publish files as symlinks): the mode checked
is its target's, and writes replace the target, keeping the link.

`ApiKeys.load` is what `auth_middleware` checks keys against: its `tenant_of` compares digests in
constant time over every entry, and looks at the file (one stat) at most once a second: when it
changed, it is read again. A change that cannot be used (invalid JSON or entry, a mode open to
others, the file gone) keeps the keys loaded before and is logged once; it never lets a request
in that the previous keys would refuse, and never silently drops every key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shlex
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from api import internal
from api.errors import UNAUTHORIZED, HttpError
from streams.errors import ConfigError

log = logging.getLogger(__name__)

TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_PREFIX = "cg_"
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{8}")
_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
# What a presented key may be: 1 to 200 printable ASCII characters, no space. Anything else
# (longer, non-ASCII, surrogate-escaped bytes) is no key at all, before any hashing.
MAX_KEY_CHARS = 200
_KEY_CHARS = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_CHARS}}}")
_BEARER = re.compile(r"bearer[ \t]+([^ \t]+)[ \t]*", re.IGNORECASE | re.ASCII)
# A header value a client may send: visible ASCII, space and tab (RFC 9110 field-value without
# the obsolete obs-text bytes).
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
MAX_FILE_BYTES = 4 * 1024 * 1024
CHECK_EVERY_S = 1.0
FORMAT_VERSION = 2

Signature = tuple[int, ...]


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key: never its secret or digest."""

    id: str
    tenant: str
    created_at: str | None  # ISO 8601; None for a key migrated from a version 1 file


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once: the file keeps only its digest
    info: KeyInfo


@dataclass(frozen=True)
class _Entry:
    info: KeyInfo
    digest: bytes


@dataclass(frozen=True)
class _Contents:
    version: int
    entries: tuple[_Entry, ...]
    signature: Signature


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def _legacy_id(key: str) -> str:
    """A stable id for a version 1 key (no id of its own); a domain-separated hash, not the digest."""
    return hashlib.sha256(b"clipguard key id\0" + key.encode("ascii")).hexdigest()[:8]


def _signature(st: os.stat_result) -> Signature:
    # ctime and mode too: a chmod changes neither mtime nor size nor inode.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _check_tenant(tenant: object, where: str) -> str:
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise ConfigError(
            f"{where}tenant name {tenant!r} is not allowed ({TENANT_PATTERN.pattern})"
        )
    return tenant


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"API key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"API key file {path} may be read or written by group or others (mode "
            f"{mode:04o}); restrict it to its owner: chmod 600 {shlex.quote(str(path))}"
        )


def _read_if_exists(path: Path) -> _Contents | None:
    try:
        return _read(path)
    except ConfigError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


def _read(path: Path) -> _Contents:
    """The parsed key file; ConfigError when it is missing or unusable."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the worker (fstat refuses it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"API key file {path} is missing; create one with `clipguard keys add TENANT`"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"API key file {path} cannot be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        _check_mode(path, st)
        try:
            data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"API key file {path} cannot be read: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"API key file {path} is larger than {MAX_FILE_BYTES} bytes")
    version, entries = _parse(path, data)
    return _Contents(version, entries, _signature(st))


def _parse(path: Path, data: bytes) -> tuple[int, tuple[_Entry, ...]]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"API key file {path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"API key file {path} is nested too deeply") from exc
    shape = (
        f'API key file {path} must be {{"version": 2, "keys": [{{"id": ..., "tenant": ..., '
        f'"sha256": ..., "created_at": ...}}]}} (or version 1: {{"keys": [{{"key": ..., '
        f'"tenant": ...}}]}})'
    )
    if not isinstance(doc, dict) or not set(doc) <= {"version", "keys"}:
        raise ConfigError(shape)
    version = doc.get("version", 1)
    if type(version) is not int or version not in (1, FORMAT_VERSION):
        raise ConfigError(f"API key file {path}: unknown version {version!r} (1 or 2)")
    items = doc.get("keys")
    if not isinstance(items, list):
        raise ConfigError(shape)
    entries = []
    for i, item in enumerate(items):
        where = f"API key file {path}: entry {i}: "
        entries.append(_legacy_entry(item, where) if version == 1 else _entry(item, where))
    if len({e.info.id for e in entries}) < len(entries):
        raise ConfigError(f"API key file {path}: two entries have the same id")
    if len({e.digest for e in entries}) < len(entries):
        raise ConfigError(f"API key file {path}: the same key is listed twice")
    return version, tuple(entries)


def _legacy_entry(item: object, where: str) -> _Entry:
    if not isinstance(item, dict) or set(item) != {"key", "tenant"}:
        raise ConfigError(f"{where}must have exactly key and tenant (version 1)")
    key = item["key"]
    if not isinstance(key, str) or not _KEY_CHARS.fullmatch(key):
        raise ConfigError(f"{where}key must be 1 to {MAX_KEY_CHARS} printable ASCII characters")
    tenant = _check_tenant(item["tenant"], where)
    return _Entry(KeyInfo(_legacy_id(key), tenant, None), _digest(key))


def _entry(item: object, where: str) -> _Entry:
    fields = {"id", "tenant", "sha256", "created_at"}
    if not isinstance(item, dict) or set(item) != fields:
        raise ConfigError(f"{where}must have exactly {', '.join(sorted(fields))}")
    key_id, digest, created_at = item["id"], item["sha256"], item["created_at"]
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise ConfigError(f"{where}id must be 8 lowercase hex digits")
    if not isinstance(digest, str) or not _DIGEST_PATTERN.fullmatch(digest):
        raise ConfigError(f"{where}sha256 must be 64 lowercase hex digits")
    if created_at is not None:
        try:
            datetime.fromisoformat(created_at)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}created_at must be an ISO 8601 time or null") from exc
    tenant = _check_tenant(item["tenant"], where)
    return _Entry(KeyInfo(key_id, tenant, created_at), bytes.fromhex(digest))


class ApiKeys:
    """The keys of a key file, read again when the file changes (checked at most once a second).

    `clock` (monotonic seconds) is injectable so that tests move time instead of sleeping.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.path = path
        self._clock = clock
        self._check_every_s = check_every_s
        contents = _read(path)  # a ConfigError here stops the worker before it serves
        self._use(contents)
        self._checked_at = clock()

    @classmethod
    def load(cls, path: Path, *, clock: Callable[[], float] = time.monotonic) -> ApiKeys:
        return cls(path, clock=clock)

    def _use(self, contents: _Contents) -> None:
        self._table = [(e.digest, e.info.tenant) for e in contents.entries]
        self._seen = contents.signature
        if contents.version == 1:
            log.warning(
                "API key file %s stores plaintext keys (version 1): `clipguard keys migrate` "
                "replaces them by digests",
                self.path,
            )
        if not self._table:
            log.warning("API key file %s has no keys: every /api request is refused", self.path)

    def __len__(self) -> int:
        return len(self._table)

    def refresh(self) -> bool:
        """Read the file again if it changed (looked at once per `check_every_s`); True if read."""
        now = self._clock()
        if now - self._checked_at < self._check_every_s:
            return False
        self._checked_at = now
        try:
            seen = _signature(os.stat(self.path))
        except OSError as exc:
            seen = (-1, exc.errno or 0)
        if seen == self._seen:
            return False
        self._seen = seen  # a change that fails is reported once, not on every check
        try:
            contents = _read(self.path)
        except ConfigError as exc:
            log.error("%s; the %d keys loaded before stay in use", exc, len(self._table))
            return False
        self._use(contents)
        log.info("API key file %s read again: %d keys", self.path, len(self._table))
        return True

    def tenant_of(self, key: object) -> str | None:
        self.refresh()
        if not isinstance(key, str) or not _KEY_CHARS.fullmatch(key):
            return None
        digest = _digest(key)
        found = None
        for known, tenant in self._table:  # no early exit: same time for every key
            if hmac.compare_digest(known, digest):
                found = tenant
        return found


# --- writing the file (the `clipguard keys` commands) -------------------------------------


def _target(path: Path) -> Path:
    """The file a write replaces: a symlink's target, so that the link stays."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Path]:
    """The file to write, with its directory locked against other `clipguard keys` commands."""
    target = _target(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open the directory of {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield target
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path, target: Path, entries: tuple[_Entry, ...]) -> None:
    doc = {
        "version": FORMAT_VERSION,
        "keys": [
            {
                "id": e.info.id,
                "tenant": e.info.tenant,
                "sha256": e.digest.hex(),
                "created_at": e.info.created_at,
            }
            for e in entries
        ],
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    try:
        # mkstemp opens with O_CREAT | O_EXCL and mode 0o600: never readable by others, even briefly.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write API key file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write API key file {path}: {exc.strerror}") from exc
        raise
    with contextlib.suppress(OSError):  # the rename itself is durable once the directory is
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def create_key(path: Path, tenant: str) -> NewKey:
    """A new key for `tenant`, added to the key file (created if missing, migrated if version 1)."""
    _check_tenant(tenant, "")
    with _locked(path) as target:
        contents = _read_if_exists(target)
        entries = contents.entries if contents else ()
        taken = {e.info.id for e in entries}
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        info = KeyInfo(key_id, tenant, _now())
        _write(path, target, (*entries, _Entry(info, _digest(key))))
    return NewKey(key, info)


def add_key(path: Path, tenant: str) -> str:
    """Create a new key for `tenant` in the key file (created if missing) and return it."""
    return create_key(path, tenant).key


def list_keys(path: Path) -> list[KeyInfo]:
    return [e.info for e in _read(path).entries]


def revoke_key(path: Path, key_id: str) -> KeyInfo:
    """Remove the key `key_id` from the key file; running workers drop it within a second."""
    if not KEY_ID_PATTERN.fullmatch(key_id):  # never echo what may be a whole key
        raise ConfigError("a key id is 8 lowercase hex digits, as `clipguard keys list` shows")
    with _locked(path) as target:
        contents = _read(target)
        kept = tuple(e for e in contents.entries if e.info.id != key_id)
        if len(kept) == len(contents.entries):
            raise ConfigError(f"no API key with id {key_id} in {path} (see `clipguard keys list`)")
        _write(path, target, kept)
    return next(e.info for e in contents.entries if e.info.id == key_id)


def migrate_keys(path: Path) -> int:
    """Rewrite the key file in the current version (digests, no plaintext); the version it had."""
    with _locked(path) as target:
        contents = _read(target)
        if contents.version != FORMAT_VERSION:
            _write(path, target, contents.entries)
    return contents.version


KEYS = web.AppKey("clipguard_keys", ApiKeys)
TOKENS = web.AppKey("clipguard_internal_tokens", internal.InternalTokens)
TENANT = web.RequestKey("clipguard_tenant", str)
FROM_PEER = web.RequestKey("clipguard_from_peer", bool)
PUBLIC_PATHS = frozenset({"/api/openapi.yaml"})
_KEY_HEADERS = ("Authorization", "X-API-Key")


def _presented_key(request: web.Request) -> str | None:
    """The key of `Authorization: Bearer KEY` (scheme in any case), else of `X-API-Key`.

    A request with any Authorization or X-API-Key value that is not plain ASCII has no key: such
    bytes reach the server as surrogate escapes, which nothing downstream (hashing, forwarding
    the headers to the worker owning a result) could encode.
    """
    headers = request.headers
    if not all(
        _HEADER_VALUE.fullmatch(value)
        for name in _KEY_HEADERS
        for value in headers.getall(name, [])
    ):
        return None
    match = _BEARER.fullmatch(request.headers.get("Authorization", ""))
    for key in (match[1] if match else None, request.headers.get("X-API-Key")):
        if key is not None and _KEY_CHARS.fullmatch(key):
            return key
    return None


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        if internal.HEADER in request.headers:  # another worker, forwarding a lookup
            tenant = _internal_tenant(request)
            request[FROM_PEER] = tenant is not None
        else:
            tenant = request.app[KEYS].tenant_of(_presented_key(request))
        if tenant is None:
            raise HttpError(UNAUTHORIZED, "a valid API key is required (Authorization: Bearer KEY)")
        request[TENANT] = tenant
    return await handler(request)


def _internal_tenant(request: web.Request) -> str | None:
    """A peer's token is good only for GET of the one result it names."""
    clip_id = request.match_info.get("id")
    token = request.headers.get(internal.HEADER, "")
    if request.method != "GET" or clip_id is None or not _HEADER_VALUE.fullmatch(token):
        return None
    return request.app[TOKENS].verify(token, clip_id)
