"""The upload store's housekeeping: uploads are kept as long as their results, then removed."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def prune_uploads(directory: Path, max_age_s: float, now: float | None = None) -> int:
    """Remove uploaded clips older than `max_age_s`; return how many were removed.

    Uploads outlive their first decode on purpose: at-least-once delivery may decode a clip again.
    """
    now = time.time() if now is None else now
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.iterdir():
        try:
            if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another worker sharing the store removed it first
            continue
    if removed:
        log.info("removed %d uploads older than %.0f s from %s", removed, max_age_s, directory)
    return removed
