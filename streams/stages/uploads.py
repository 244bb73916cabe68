"""The upload store: clips posted over HTTP, kept on disk until their results expire.

One module owns the store's layout. The HTTP API writes an upload (`new`, then `discard` if the
request is refused), the decode step turns its `upload://<name>` reference into a file URI
(`resolve`), and a timer removes old uploads (`prune`). Uploads outlive their first decode on
purpose: at-least-once delivery may decode a clip again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ClipError, ErrorCode
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

    def new(self, clip_id: str, filename: str) -> Upload:
        """Where to store the upload of clip `clip_id` (its client-side name gives the suffix)."""
        suffix = Path(filename).suffix.lower()
        name = clip_id + (suffix if suffix in VIDEO_SUFFIXES else "")
        self.directory.mkdir(parents=True, exist_ok=True)
        return Upload(self.directory / name, SCHEME + name)

    def discard(self, upload: Upload) -> None:
        upload.path.unlink(missing_ok=True)

    def resolve(self, uri: str, clip_id: str) -> str:
        """`upload://<name>` as a file:// URI inside the store; any other URI unchanged."""
        if not uri.startswith(SCHEME):
            return uri
        name = uri.removeprefix(SCHEME)
        if not name or "/" in name or name.startswith("."):
            raise ClipError(
                ErrorCode.SOURCE_FORBIDDEN, f"bad upload reference {uri!r}", clip_id=clip_id
            )
        return (self.directory / name).resolve().as_uri()

    def prune(self, max_age_s: float, now: float | None = None) -> int:
        """Remove uploads older than `max_age_s`; return how many were removed."""
        now = time.time() if now is None else now
        removed = 0
        if not self.directory.is_dir():
            return 0
        for path in self.directory.iterdir():
            try:
                if (
                    path.is_file()
                    and not path.is_symlink()
                    and now - path.stat().st_mtime > max_age_s
                ):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another worker sharing the store removed it first
                continue
        if removed:
            log.info(
                "removed %d uploads older than %.0f s from %s", removed, max_age_s, self.directory
            )
        return removed
