"""Decode one clip into a few analysis frames (pure: a path in, a `SampledClip` out).

The rules (docs/decode.md says the same for users):
- Sampling: every frame is decoded (inter-frame prediction leaves no cheaper way); a frame is
  kept when it is the first at or after the next sampling instant k / sample_fps, counted from
  the clip's first frame. A source slower than sample_fps keeps every frame, never a duplicate.
- Size: the analysis frame fits a box `analysis_height` tall and `max_analysis_width` wide
  (analysis_height x 16/9, rounded up to even: 570 for 320), keeping the aspect ratio, the
  scaled side rounded to the nearest even number; a source that fits keeps its own size (never
  upscaled). Up to 16:9 that is "height analysis_height", as it always was (1280x720 ->
  568x320); wider sources are bounded by the width (4096x320 -> 570x44).
- Rotation: a display matrix (phone clips) is applied, so frames and sizes are as displayed.
- Limits are checked from the container's header before decoding and again while decoding,
  since headers can lie or be missing: every decoded frame's size (a stream may change size
  mid-way), the count of decoded frames as well as kept ones, and the decoder itself refuses
  pictures over the size limit before allocating them (FFmpeg's `max_pixels`).
- Running out of memory (the decode child's memory limit, streams/stages/pool.py) is
  LIMIT_EXCEEDED, raised `from` one of `OUT_OF_MEMORY` so the pool knows to replace the child.
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

# Frames decoded (not only kept) per clip: the longest clip (max_duration_s, 120 s) at 120 fps.
# Tiny frames at a huge rate cost time and a pipe full of nothing; this stops them early.
# To become the setting `max_decoded_frames`.
MAX_DECODED_FRAMES = 14_400

# FFmpeg checks `max_pixels` against the coded size (padded to whole macroblocks, coding units
# or a stride alignment of up to 64), so the decoder's cap leaves that much room on each axis;
# the exact width x height limit is checked on every decoded frame.
_CODED_PADDING = 64

# What running out of memory looks like: MemoryError (Python, numpy, and FFmpeg's ENOMEM as
# av.error.MemoryError), and FFmpeg's EAGAIN when it cannot start a thread (swscale and frame
# threads: no room left for the thread's stack).
OUT_OF_MEMORY: tuple[type[Exception], ...] = (MemoryError, av.error.BlockingIOError)


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


def max_analysis_width(analysis_height: int) -> int:
    """The widest analysis frame: a 16:9 frame `analysis_height` tall, rounded up to even.

    Rounding up keeps every 16:9 source (and the near-16:9 854x480, 1366x768) at exactly the
    size the height alone gives it: 568 or 570 wide for 320.
    """
    return 2 * math.ceil(analysis_height * 16 / 9 / 2)


def analysis_size(width: int, height: int, analysis_height: int) -> tuple[int, int]:
    """(width, height) of the analysis frames for a source displayed at width x height.

    The frame fits a box `analysis_height` tall and `max_analysis_width` wide, keeping the
    aspect ratio; the scaled side is rounded to the nearest even number (at least 2, never
    more than the source); a source that fits the box keeps its size.
    """
    max_width = max_analysis_width(analysis_height)
    if width <= max_width and height <= analysis_height:
        return width, height
    if width * analysis_height <= max_width * height:  # the height binds (16:9 and narrower)
        return _scaled(width, analysis_height, height), analysis_height
    return max_width, _scaled(height, max_width, width)  # the width binds (wider than 16:9)


def _scaled(length: int, new: int, old: int) -> int:
    """`length` scaled by new/old, to the nearest even number, at least 2, at most `length`."""
    # length * new / old, in that order: the rounding of every size the rule gave before.
    return min(length, max(2, 2 * round(length * new / old / 2)))


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
        # ENOMEM here too: a damaged header asking for more than FFmpeg ever allocates at once.
        raise ClipError(
            ErrorCode.INVALID_VIDEO, f"{name}: not a readable video file ({_reason(exc)})"
        ) from exc
    try:
        with container:
            stream = _video_stream(container, name)
            _check_header_limits(container, stream, name, settings)
            # Before the first packet (the decoder opens then): pictures larger than the limit
            # are refused before their buffers are allocated.
            stream.codec_context.options = {"max_pixels": str(_max_pixels(settings))}
            frames, timestamps, specs = _sample(container, stream, name, settings)
    except OUT_OF_MEMORY as exc:
        raise _out_of_memory(name) from exc
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


def _check_dimensions(
    width: int, height: int, name: str, settings: Settings, where: str = ""
) -> None:
    if width > settings.max_width or height > settings.max_height:
        raise ClipError(
            ErrorCode.LIMIT_EXCEEDED,
            f"{name}: {width}x{height}{where} is over the limit of "
            f"{settings.max_width}x{settings.max_height}",
        )


def _max_pixels(settings: Settings) -> int:
    return (settings.max_width + _CODED_PADDING) * (settings.max_height + _CODED_PADDING)


def _out_of_memory(name: str) -> ClipError:
    return ClipError(ErrorCode.LIMIT_EXCEEDED, f"{name}: the decoder ran out of its memory limit")


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
    for frame in _decoded_frames(stream, container, name, settings, errors):
        if decoded >= MAX_DECODED_FRAMES:
            raise ClipError(
                ErrorCode.LIMIT_EXCEEDED,
                f"{name}: {decoded + 1:,} or more decoded frames is over the limit of "
                f"{MAX_DECODED_FRAMES:,} decoded frames",
            )
        # Every frame, not only the first: a stream may change size mid-way (a 64x64 first
        # frame, then 8192x8192 ones).
        upright = _quarter_turns(frame.rotation) % 2 == 0
        size = (frame.width, frame.height) if upright else (frame.height, frame.width)
        _check_dimensions(*size, name, settings, f" (frame {decoded})")
        stamp = frame.time
        if stamp is None:
            step = 1.0 / nominal_rate if nominal_rate else interval
            stamp = (last_time + step) if first_time is not None else 0.0
        if first_time is None:
            first_time = stamp
            display = size
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
    settings: Settings,
    errors: list[av.error.FFmpegError],
) -> Iterator[av.VideoFrame]:
    """Every frame of `stream`; FFmpeg errors go to `errors` instead of ending the clip.

    A packet the decoder rejects is skipped (the next keyframe repairs the picture); a
    demuxer error ends the stream (nothing after it can be trusted to be in order). Two
    rejections are not damage: running out of memory (`OUT_OF_MEMORY`, raised on), and a
    picture over the size limit (LIMIT_EXCEEDED, `_check_decoder_size`), which the decoder
    may also drop without an error (H.264 with frame threads): its size is checked after
    every packet.
    """
    context = stream.codec_context
    packets = container.demux(stream)
    count = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except OUT_OF_MEMORY:
            raise
        except av.error.FFmpegError as exc:
            errors.append(exc)
            break
        before = (context.width, context.height)
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            _check_decoder_size(context, before, exc, name, settings, count)
            errors.append(exc)
            continue
        except ValueError as exc:
            # PyAV's word for a stream whose header names no codec it has (damaged header).
            raise ClipError(
                ErrorCode.UNSUPPORTED_CODEC, f"{name}: no decoder for its video stream ({exc})"
            ) from exc
        # Frames first: a frame over the limit is named by `_sample`, with its exact index.
        yield from frames
        count += len(frames)
        _check_decoder_size(context, before, None, name, settings, count)
    # The demuxer gave up early: frames still held inside the decoder (frame threads,
    # reordering) were decoded correctly and are worth keeping.
    before = (context.width, context.height)
    try:
        frames = context.decode(None)
    except av.error.FFmpegError as exc:
        _check_decoder_size(context, before, exc, name, settings, count)
        errors.append(exc)
        return
    yield from frames
    _check_decoder_size(context, before, None, name, settings, count + len(frames))


def _check_decoder_size(
    context: av.VideoCodecContext,
    before: tuple[int, int],
    error: av.error.FFmpegError | None,
    name: str,
    settings: Settings,
    index: int,
) -> None:
    """LIMIT_EXCEEDED when the decoder took a picture size over the limit, after a packet.

    Over its pixel cap, a decoder either keeps the new size and gets no buffer for it (H.264:
    EINVAL, AVERROR_INVALIDDATA or, with frame threads, no error at all; HEVC: ENOMEM), or
    refuses to take the size (MJPEG, MPEG-4, VP9: EINVAL, and its size drops to 0x0). Running
    out of memory otherwise is raised on (`OUT_OF_MEMORY`); other errors are damaged data.
    `index` is the first frame not returned yet (a frame-threaded decoder may hold a few more).
    The decoder's size is the coded one, before any rotation: it is over the limit only when
    neither way round fits (each frame is checked as displayed in `_sample`).
    """
    width, height = context.width, context.height
    if not (
        (width <= settings.max_width and height <= settings.max_height)
        or (height <= settings.max_width and width <= settings.max_height)
    ):
        _check_dimensions(width, height, name, settings, f" (frame {index})")
    if error is None:
        return
    if isinstance(error, OUT_OF_MEMORY):
        raise error
    refused = context.width == 0 or context.height == 0
    if isinstance(error, av.error.ArgumentError) and refused and 0 not in before:
        raise ClipError(
            ErrorCode.LIMIT_EXCEEDED,
            f"{name}: the decoder refused frame {index}: it is larger than the limit of "
            f"{settings.max_width}x{settings.max_height}",
        ) from error


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
