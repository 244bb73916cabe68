"""Decode one clip into a few analysis frames (pure: a path in, a `SampledClip` out).

The rules (docs/decode.md says the same for users):
- Sampling: every frame is decoded (inter-frame prediction leaves no cheaper way); a frame is
  kept when it is the first at or after the next sampling instant k / sample_fps, counted from
  the clip's first frame. A source slower than sample_fps keeps every frame, never a duplicate.
- Size: height `analysis_height` keeping the aspect ratio, width rounded to the nearest even
  number; a source not taller than that keeps its own size (never upscaled).
- Rotation: a display matrix (phone clips) is applied, so frames and sizes are as displayed.
- Limits are checked from the container's header before decoding and again while decoding,
  since headers can lie or be missing.
- A file that breaks part-way (truncated upload): frames decoded before the break are kept if
  there is at least one, the break is logged; otherwise INVALID_VIDEO.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings

log = logging.getLogger(__name__)

# Demuxers we accept (FFmpeg names). Everything else is refused before a packet is read:
# playlists (hls, concat) would make FFmpeg open further files or URLs named inside the
# upload, and still-image or text demuxers (image2, tty) would turn a non-video into "frames".
VIDEO_CONTAINERS = frozenset(
    {
        "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts",
        "flv", "asf", "mpeg", "mpegvideo", "h264", "hevc", "m4v", "ogg", "mxf", "nut", "ivf",
        "mjpeg", "dv",
    }
)  # fmt: skip

# File name suffixes kept on stored uploads and downloads, so FFmpeg's probe gets the hint a
# local file would give it (the content is probed anyway; VIDEO_CONTAINERS decides).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".flv", ".mpg", ".mpeg", ".3gp"}
)

# Sampling instants are compared with float timestamps; a frame stamped 0.9999999 s must
# still count as "at" the instant 1.0 s.
_TIME_EPSILON = 1e-6


@dataclass(frozen=True)
class VideoSpecs:
    width: int
    height: int
    fps: float
    nframes: int
    duration: float
    original_width: int
    original_height: int
    original_fps: float
    original_nframes: int


@dataclass(frozen=True)
class SampledClip:
    videoname: str
    filesize: int
    specs: VideoSpecs
    frames: tuple[np.ndarray, ...]
    timestamps: tuple[float, ...]
    # Set by pool.decode_to_jpeg: the frames as JPEG (then `frames` is empty) and what that cost.
    jpeg_frames: tuple[bytes, ...] = ()
    encode_ms: float = 0.0


def analysis_size(width: int, height: int, analysis_height: int) -> tuple[int, int]:
    """(width, height) of the analysis frames for a source displayed at width x height."""
    if height <= analysis_height:
        return width, height
    scaled = width * analysis_height / height
    even = max(2, 2 * round(scaled / 2))
    return even, analysis_height


def decode(path: Path, settings: Settings, *, videoname: str | None = None) -> SampledClip:
    name = videoname or path.name
    filesize = _checked_size(path, name, settings)
    try:
        container = av.open(
            str(path),
            # Only the local file itself: no network or nested-protocol reads.
            options={"protocol_whitelist": "file"},
        )
    except av.error.FFmpegError as exc:
        raise ClipError(
            ErrorCode.INVALID_VIDEO, f"{name}: not a readable video file ({_reason(exc)})"
        ) from exc
    with container:
        stream = _video_stream(container, name)
        _check_header_limits(container, stream, name, settings)
        frames, timestamps, specs = _sample(container, stream, name, settings)
    return SampledClip(
        videoname=name,
        filesize=filesize,
        specs=specs,
        frames=tuple(frames),
        timestamps=tuple(timestamps),
    )


def _checked_size(path: Path, name: str, settings: Settings) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ClipError(ErrorCode.SOURCE_NOT_FOUND, f"{name}: file not found") from exc
    except OSError as exc:
        raise ClipError(ErrorCode.SOURCE_NOT_FOUND, f"{name}: cannot read file ({exc})") from exc
    if size == 0:
        raise ClipError(ErrorCode.INVALID_VIDEO, f"{name}: the file is empty")
    if size > settings.max_clip_bytes:
        raise ClipError(
            ErrorCode.SOURCE_TOO_LARGE,
            f"{name}: {size:,} bytes is over the limit of {settings.max_clip_bytes:,} bytes",
        )
    return size


def _video_stream(container: av.container.InputContainer, name: str) -> av.VideoStream:
    format_names = set(container.format.name.split(","))
    # Cover art in audio files is a "video" stream of one picture; it is not footage.
    videos = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not videos:
        kinds = ", ".join(f"{s.type} ({_codec_name(s)})" for s in container.streams) or "none"
        raise ClipError(
            ErrorCode.NO_VIDEO_STREAM,
            f"{name}: the {container.format.name} file has no video stream (streams: {kinds})",
        )
    if not format_names & VIDEO_CONTAINERS:
        raise ClipError(
            ErrorCode.INVALID_VIDEO,
            f"{name}: format {container.format.name!r} is not an accepted video container",
        )
    stream = videos[0]
    if stream.codec_context is None:
        raise ClipError(
            ErrorCode.UNSUPPORTED_CODEC,
            f"{name}: no decoder for its video codec ({_codec_name(stream)})",
        )
    stream.thread_type = "AUTO"
    return stream


def _check_header_limits(
    container: av.container.InputContainer, stream: av.VideoStream, name: str, settings: Settings
) -> None:
    _check_dimensions(stream.width, stream.height, name, settings)
    duration = _header_duration(container, stream)
    if duration is not None:
        _check_duration(duration, name, settings)
        rate = settings.sample_fps
        if stream.average_rate:
            rate = min(rate, float(stream.average_rate))
        expected_frames = math.floor(duration * rate + _TIME_EPSILON)
        if stream.frames:
            expected_frames = min(expected_frames, stream.frames)
        if expected_frames > settings.max_frames:
            raise _too_many_frames(name, expected_frames, settings)


def _header_duration(
    container: av.container.InputContainer, stream: av.VideoStream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _check_dimensions(width: int, height: int, name: str, settings: Settings) -> None:
    if width > settings.max_width or height > settings.max_height:
        raise ClipError(
            ErrorCode.LIMIT_EXCEEDED,
            f"{name}: {width}x{height} is over the limit of "
            f"{settings.max_width}x{settings.max_height}",
        )


def _check_duration(duration: float, name: str, settings: Settings) -> None:
    if duration > settings.max_duration_s:
        raise ClipError(
            ErrorCode.LIMIT_EXCEEDED,
            f"{name}: {duration:.2f} s is over the limit of {settings.max_duration_s:g} s",
        )


def _too_many_frames(name: str, count: int, settings: Settings) -> ClipError:
    return ClipError(
        ErrorCode.LIMIT_EXCEEDED,
        f"{name}: {count} or more sampled frames at {settings.sample_fps:g} fps is over the "
        f"limit of {settings.max_frames} frames",
    )


def _sample(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    name: str,
    settings: Settings,
) -> tuple[list[np.ndarray], list[float], VideoSpecs]:
    interval = 1.0 / settings.sample_fps
    kept: list[np.ndarray] = []
    stamps: list[float] = []
    decoded = 0
    first_time: float | None = None
    last_time = 0.0
    last_frame_length: float | None = None
    next_instant = 0.0
    display: tuple[int, int] | None = None
    nominal_rate = float(stream.average_rate) if stream.average_rate else None

    errors: list[av.error.FFmpegError] = []
    for frame in _decoded_frames(stream, container, name, errors):
        stamp = frame.time
        if stamp is None:
            step = 1.0 / nominal_rate if nominal_rate else interval
            stamp = (last_time + step) if first_time is not None else 0.0
        if first_time is None:
            first_time = stamp
            upright = _quarter_turns(frame.rotation) % 2 == 0
            display = (frame.width, frame.height) if upright else (frame.height, frame.width)
            _check_dimensions(*display, name, settings)
        relative = stamp - first_time
        if relative < last_time - first_time and decoded:
            # Out-of-order or repeated stamps (broken muxers): never step back in time.
            relative = last_time - first_time
        decoded += 1
        last_time = first_time + relative
        if frame.duration and frame.time_base is not None:
            last_frame_length = float(frame.duration * frame.time_base)
        _check_duration(relative, name, settings)
        if relative + _TIME_EPSILON < next_instant:
            continue
        if len(kept) >= settings.max_frames or display is None:
            raise _too_many_frames(name, len(kept) + 1, settings)
        kept.append(_analysis_frame(frame, display, settings.analysis_height))
        stamps.append(round(relative, 3))
        next_instant = (math.floor(relative / interval + _TIME_EPSILON) + 1) * interval

    error = errors[0] if errors else None
    if error is not None:
        if not kept:
            raise ClipError(
                ErrorCode.INVALID_VIDEO, f"{name}: the video data is damaged ({_reason(error)})"
            ) from error
        log.warning(
            "%s: %d decoding error(s), first: %s; keeping the %d frames sampled from %d decoded",
            name, len(errors), _reason(error), len(kept), decoded,
        )  # fmt: skip
    if not kept or display is None or first_time is None:
        raise ClipError(
            ErrorCode.NO_FRAMES,
            f"{name}: not one frame of its video stream decodes (empty or cut short?)",
        )

    span = last_time - first_time
    if last_frame_length is None or last_frame_length <= 0:
        last_frame_length = span / (decoded - 1) if decoded > 1 else 0.0
    duration = span + last_frame_length
    _check_duration(duration - _TIME_EPSILON, name, settings)
    height, width = kept[0].shape[:2]
    specs = VideoSpecs(
        width=width,
        height=height,
        fps=round(len(kept) / duration, 2) if duration > 0 else 0.0,
        nframes=len(kept),
        duration=round(duration, 3),
        original_width=display[0],
        original_height=display[1],
        original_fps=round(decoded / duration, 2) if duration > 0 else 0.0,
        original_nframes=decoded,
    )
    return kept, stamps, specs


def _decoded_frames(
    stream: av.VideoStream,
    container: av.container.InputContainer,
    name: str,
    errors: list[av.error.FFmpegError],
) -> Iterator[av.VideoFrame]:
    """Every frame of `stream`; FFmpeg errors go to `errors` instead of ending the clip.

    A packet the decoder rejects is skipped (the next keyframe repairs the picture); a
    demuxer error ends the stream (nothing after it can be trusted to be in order).
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            errors.append(exc)
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            errors.append(exc)
            continue
        except ValueError as exc:
            # PyAV's word for a stream whose header names no codec it has (damaged header).
            raise ClipError(
                ErrorCode.UNSUPPORTED_CODEC, f"{name}: no decoder for its video stream ({exc})"
            ) from exc
        yield from frames
    # The demuxer gave up early: frames still held inside the decoder (frame threads,
    # reordering) were decoded correctly and are worth keeping.
    try:
        yield from stream.codec_context.decode(None)
    except av.error.FFmpegError as exc:
        errors.append(exc)


def _analysis_frame(
    frame: av.VideoFrame, display: tuple[int, int], analysis_height: int
) -> np.ndarray:
    turns = _quarter_turns(frame.rotation)
    width, height = analysis_size(display[0], display[1], analysis_height)
    coded = (width, height) if turns % 2 == 0 else (height, width)
    # One swscale pass does both the resize and the conversion to RGB.
    rgb = frame.to_ndarray(width=coded[0], height=coded[1], format="rgb24", interpolation="AREA")
    if turns:
        # FFmpeg's rotation is counter-clockwise, like np.rot90 with positive k.
        rgb = np.rot90(rgb, k=turns)
    # swscale pads rows; consumers (JPEG encoder, ONNX input) want a plain array.
    return np.ascontiguousarray(rgb)


def _quarter_turns(rotation: int) -> int:
    return round(rotation / 90) % 4


def _codec_name(stream: av.stream.Stream) -> str:
    if stream.codec_context is not None:
        return str(stream.codec_context.name)
    return "unknown codec"


def _reason(exc: av.error.FFmpegError) -> str:
    return exc.strerror or type(exc).__name__
