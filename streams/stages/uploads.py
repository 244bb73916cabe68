"""The upload store: clips posted over HTTP, kept on disk until their results expire.

One module owns the store's layout: `<upload_dir>/<tenant>/<clip id><suffix>`. The HTTP API
writes an upload (`new`, then `discard` if the request is refused), the decode step turns its
`upload://<name>` reference into a file inside the requesting tenant's folder only
(`path_of`), and a timer removes old uploads (`prune`). Uploads outlive their first decode on
purpose: at-least-once delivery may decode a clip again. The store must not lie under a media
root (settings refuse that), or a `file://` request could name another tenant's upload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ClipError, ErrorCode
from streams.records import TENANT_PATTERN
from streams.stages.decode import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

SCHEME = "upload://"


@dataclass(frozen=True)
class Upload:
    path: Path  # where to write the bytes
    uri: str  # what the clip request names: upload://<name>


class UploadStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def new(self, clip_id: str, tenant: str, filename: str) -> Upload:
        """Where to store the upload of clip `clip_id` (its client-side name gives the suffix)."""
        suffix = Path(filename).suffix.lower()
        name = clip_id + (suffix if suffix in VIDEO_SUFFIXES else "")
        folder = self._folder(tenant, clip_id)
        folder.mkdir(parents=True, exist_ok=True)
        return Upload(folder / name, SCHEME + name)

    def discard(self, upload: Upload) -> None:
        upload.path.unlink(missing_ok=True)

    def usage(self, tenant: str) -> int:
        """Bytes the tenant's uploads take now (for the per-tenant quota)."""
        return sum(size for _, size in self._files(self._folder(tenant, None)))

    def path_of(self, uri: str, clip_id: str, tenant: str) -> Path:
        """The file an `upload://<name>` reference names, looked for in `tenant`'s folder only."""
        name = uri.removeprefix(SCHEME)
        if not uri.startswith(SCHEME) or not name or "/" in name or "\\" in name or name[0] == ".":
            raise ClipError(
                ErrorCode.SOURCE_FORBIDDEN, f"bad upload reference {uri[:80]!r}", clip_id=clip_id
            )
        path = self._folder(tenant, clip_id) / name
        if path.is_symlink() or not path.is_file():
            raise ClipError(
                ErrorCode.SOURCE_NOT_FOUND, f"no upload {name!r} (expired?)", clip_id=clip_id
            )
        return path

    def prune(self, max_age_s: float, now: float | None = None) -> int:
        """Remove uploads older than `max_age_s`; return how many were removed."""
        now = time.time() if now is None else now
        removed = 0
        if not self.directory.is_dir():
            return 0
        folders = [p for p in self.directory.iterdir() if p.is_dir() and not p.is_symlink()]
        for folder in [self.directory, *folders]:
            for path, _ in self._files(folder):
                try:
                    if now - path.stat().st_mtime > max_age_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:  # another worker sharing the store removed it first
                    continue
        if removed:
            log.info(
                "removed %d uploads older than %.0f s from %s", removed, max_age_s, self.directory
            )
        return removed

    def _folder(self, tenant: str, clip_id: str | None) -> Path:
        if not TENANT_PATTERN.fullmatch(tenant):  # never a path: no "/", never starts with "."
            raise ClipError(
                ErrorCode.SOURCE_FORBIDDEN,
                f"tenant {tenant[:70]!r} has no uploads",
                clip_id=clip_id,
            )
        return self.directory / tenant

    @staticmethod
    def _files(folder: Path) -> Iterator[tuple[Path, int]]:
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            try:
                if path.is_file() and not path.is_symlink():
                    yield path, path.stat().st_size
            except FileNotFoundError:
                continue
