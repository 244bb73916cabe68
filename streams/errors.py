"""The one exception hierarchy of ClipGuard, and the table of error codes.

Every failure a user can see ends up as a result with `error_code` and `error_msg`
(errors are data): stages raise one of these, agents turn it into an error result and
a dead-letter record. The codes are part of the published API and are documented in
docs/errors.md; never renumber one.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    OK = 0
    # 1xx: getting the clip's bytes
    SOURCE_NOT_FOUND = 101
    SOURCE_FORBIDDEN = 102
    FETCH_FAILED = 103
    SOURCE_TOO_LARGE = 104
    # 2xx: decoding the clip
    INVALID_VIDEO = 201
    NO_VIDEO_STREAM = 202
    UNSUPPORTED_CODEC = 203
    LIMIT_EXCEEDED = 204
    DECODER_CRASHED = 205
    NO_FRAMES = 206
    DECODE_TIMEOUT = 207
    # 3xx: classifying the frames
    INFERENCE_FAILED = 301
    # 4xx: the message itself
    MALFORMED_MESSAGE = 401
    ID_CONFLICT = 402
    # 5xx: a bug of ours, or Kafka refusing an output of ours for good
    INTERNAL = 500
    UNDELIVERABLE = 501
    DEADLINE_EXCEEDED = 502


class ClipGuardError(Exception):
    """Root of every error ClipGuard raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, clip_id: str | None = None) -> None:
        self.clip_id = clip_id
        super().__init__(f"clip {clip_id}: {message}" if clip_id else message)


class ConfigError(ClipGuardError):
    """A setting, policy or key file is missing or wrong."""


class BrokerError(ClipGuardError):
    """The local Kafka broker could not be fetched, started, probed or stopped."""


class QueueUnavailable(ClipGuardError):
    """A clip request could not be handed to Kafka (unreachable, or too slow to acknowledge)."""


class CodecError(ClipGuardError):
    """A message could not be encoded or decoded (framing, fingerprint, Avro body)."""

    code = ErrorCode.MALFORMED_MESSAGE


class ClipError(ClipGuardError):
    """A clip could not be processed; `code` says why, for the result's `error_code`."""

    def __init__(self, code: ErrorCode, message: str, *, clip_id: str | None = None) -> None:
        self.code = code
        super().__init__(message, clip_id=clip_id)
