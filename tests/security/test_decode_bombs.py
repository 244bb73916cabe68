"""Decode bombs: clips made to cost message bytes, memory or time (an outside tester's findings).

Every clip is made here, in tmp_path, with PyAV from real footage (the frames of
tests/fixtures/clips/people_h264.mp4): no large binary fixture in git.

- A wide clip (4096x320) once kept its width: a decoded message over the topic limit, and the
  clip got neither a result nor a dead letter. Now the analysis frame fits 570x320.
- An MJPEG AVI whose first frame is 64x64 and whose later frames are 8192x8192 passed the
  4096x4096 limit (checked on the first frame only), reported 64x64, and took 455 MiB in the
  decoder. Now every frame is checked and the decoder refuses the large pictures before
  allocating them.
- The count of decoded frames (not only kept ones) is capped.
- A decode child that runs out of its memory limit gives an error result and is replaced.
"""

from __future__ import annotations

import io
import os
import resource
from collections.abc import AsyncIterator, Iterable
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages import pool as pool_module
from streams.stages.decode import MAX_DECODED_FRAMES, SampledClip, decode
from streams.stages.pool import MAX_DECODED_BYTES, DecodePool, decode_to_jpeg

CLIPS = Path(__file__).parent.parent / "fixtures" / "clips"
GOOD = CLIPS / "people_h264.mp4"
SETTINGS = Settings(decode_timeout_s=30.0)
MiB = 1024 * 1024


# --- making clips -----------------------------------------------------------------------------


@cache
def footage() -> tuple[np.ndarray, ...]:
    """The 40 frames of people_h264.mp4 (640x360 RGB): real pedestrians, real noise."""
    with av.open(str(GOOD)) as container:
        return tuple(f.to_ndarray(format="rgb24") for f in container.decode(video=0))


def tiled(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    reps = (-(-height // frame.shape[0]), -(-width // frame.shape[1]), 1)
    return np.ascontiguousarray(np.tile(frame, reps)[:height, :width])


def jpeg(picture: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_mjpeg(path: Path, pictures: Iterable[bytes], size: tuple[int, int], fps: int) -> Path:
    """An MJPEG stream declared at `size` whose packets are the given JPEGs, whatever their size.

    PyAV's encoders keep one size per stream; MJPEG packets are whole JPEG pictures, so a
    stream whose pictures change size mid-way is JPEGs of different sizes, muxed as they are.
    The container follows the suffix: .avi (AVI) or .mjpeg (the raw MJPEG demuxer).
    """
    container = "avi" if path.suffix == ".avi" else "mjpeg"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p"
        stream.time_base = Fraction(1, fps)
        for index, data in enumerate(pictures):
            packet = av.Packet(data)
            packet.pts = packet.dts = index
            packet.duration = 1
            packet.time_base = stream.time_base
            packet.stream = stream
            out.mux(packet)
    return path


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int, codec: str = "mjpeg") -> Path:
    """A clip encoded by PyAV (`codec`, one size: the first frame's)."""
    frames = iter(frames)
    first = next(frames)
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        if codec == "mjpeg":
            stream.codec_context.qmin = stream.codec_context.qmax = 3  # ~quality 85
        for picture in (first, *frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    return path


# --- A. a wide clip ---------------------------------------------------------------------------


def test_wide_clip_is_bounded_on_both_axes_and_fits_the_decoded_topic(tmp_path: Path) -> None:
    # The tester's upload: 4096 wide, under the analysis height (so the old rule kept the
    # width). 40 s at 3 fps is 120 frames, the most a clip may keep.
    pictures = (tiled(footage()[i % 40], 4096, 320) for i in range(120))
    path = write_video(tmp_path / "wide.avi", pictures, fps=3)
    assert path.stat().st_size < SETTINGS.max_clip_bytes

    clip = decode_to_jpeg(path, SETTINGS)

    assert (clip.specs.width, clip.specs.height) == (570, 44)
    assert (clip.specs.original_width, clip.specs.original_height) == (4096, 320)
    assert clip.specs.nframes == 120
    total = sum(map(len, clip.jpeg_frames))
    assert total < MAX_DECODED_BYTES
    assert total < 2 * MiB  # 120 frames of 570x44: a small message, not a 9.45 MB one
    with Image.open(io.BytesIO(clip.jpeg_frames[0])) as first:
        assert first.size == (570, 44)


def test_tall_narrow_clip_keeps_the_height_rule(tmp_path: Path) -> None:
    pictures = (tiled(footage()[i], 320, 4096) for i in range(0, 40, 5))
    clip = decode(write_video(tmp_path / "tall.avi", pictures, fps=2), SETTINGS)
    assert (clip.specs.width, clip.specs.height) == (24, 320)
    assert all(f.shape == (320, 24, 3) for f in clip.frames)


# --- B. a stream that grows mid-way -----------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return jpeg(tiled(footage()[20], 8192, 8192), quality=30)  # ~4.4 MB


def growing_clip(directory: Path, suffix: str, big: bytes, count: int = 2) -> Path:
    """A 64x64 JPEG, then `count` 8192x8192 ones (the old code: 64x64, and ~210 MiB)."""
    small = jpeg(tiled(footage()[0], 64, 64))
    return write_mjpeg(directory / f"grows{suffix}", [small, *[big] * count], (64, 64), 25)


def child_peak_rss(path: Path, settings: Settings, *, videoname: str | None = None) -> SampledClip:
    """Test-only `decode_fn`: decode_to_jpeg, then leave the child's peak RSS growth beside the
    clip (bytes; VmHWM is per process, so the pool must be fresh)."""
    before = _status_kib("VmHWM")
    try:
        return decode_to_jpeg(path, settings, videoname=videoname)
    finally:
        grown = (_status_kib("VmHWM") - before) * 1024
        path.with_suffix(".peak").write_text(str(grown))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


@pytest.mark.parametrize("suffix", [".avi", ".mjpeg"])
def test_frames_larger_than_the_limit_after_a_small_first_one(
    tmp_path: Path, big_jpeg: bytes, suffix: str
) -> None:
    path = growing_clip(tmp_path, suffix, big_jpeg)
    with pytest.raises(ClipError) as info:
        decode(path, SETTINGS)
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert path.name in str(info.value)
    # Frames count from 0: frame 0 is the 64x64 one, frame 1 the first 8192x8192 one.
    message = f"{path.name}: the decoder refused frame 1: it is larger than the limit of 4096x4096"
    assert str(info.value) == message


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
async def test_growing_clip_costs_the_decode_child_little_and_the_pool_goes_on(
    tmp_path: Path, big_jpeg: bytes
) -> None:
    path = growing_clip(tmp_path, ".avi", big_jpeg)
    pool = DecodePool(SETTINGS, decode_fn=child_peak_rss)
    try:
        with pytest.raises(ClipError) as info:
            await pool.decode(path, SETTINGS, "cam3.avi")
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert "cam3.avi" in str(info.value)
        # One 8192x8192 picture is 96 MiB in YUV 4:2:0 (the old code held several: 455 MiB):
        # refused before its buffer exists, it costs the child nothing like that.
        peak = int(path.with_suffix(".peak").read_text())
        assert peak < 48 * MiB, f"the child grew by {peak:,} bytes"
        good = tmp_path / "good.mp4"
        good.write_bytes(GOOD.read_bytes())
        clip = await pool.decode(good, SETTINGS)
        assert clip.specs.nframes == 12
    finally:
        pool.close()


# Inter-frame codecs change size at a keyframe that carries new parameter sets; each decoder
# refuses a picture over its pixel cap in its own way (decode._check_decoder_size).
GROWING_CODECS = {
    "libx264": ("mp4", {"preset": "ultrafast"}),
    "libx265": ("mkv", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "mpeg4": ("avi", {}),
    "libvpx-vp9": ("webm", {"deadline": "realtime", "cpu-used": "8"}),
}


def write_growing_video(path: Path, codec: str, options: dict[str, str]) -> Path:
    """Three 64x64 frames, then one 4224x4224 keyframe (17.8 megapixels: over the decoder's
    cap of (4096 + 64)^2) from a second encoder, muxed into the same stream."""
    rate = Fraction(10)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = options
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(tiled(footage()[index], 64, 64), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        big = av.CodecContext.create(codec, "w")
        big.width = big.height = 4224
        big.pix_fmt = "yuv420p"
        big.time_base, big.framerate = stream.codec_context.time_base, rate
        big.options = options
        frame = av.VideoFrame.from_ndarray(tiled(footage()[3], 4224, 4224), format="rgb24")
        frame.pts = 3
        for packet in [*big.encode(frame.reformat(format="yuv420p")), *big.encode(None)]:
            packet.stream = stream
            out.mux(packet)
    return path


@pytest.mark.parametrize("codec", sorted(GROWING_CODECS))
def test_inter_frame_codecs_growing_mid_stream(tmp_path: Path, codec: str) -> None:
    try:
        av.codec.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip(f"this PyAV has no {codec} encoder")
    suffix, options = GROWING_CODECS[codec]
    path = write_growing_video(tmp_path / f"grows.{suffix}", codec, options)
    with pytest.raises(ClipError) as info:
        decode(path, SETTINGS)
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert str(info.value).startswith(path.name + ": ")
    assert "limit of 4096x4096" in str(info.value)


def test_a_later_frame_over_one_axis_is_refused_with_its_index_and_size(tmp_path: Path) -> None:
    # Under the decoder's pixel cap (8192x512 is 4.2 megapixels), over the width limit: the
    # frame decodes and the per-frame check names it.
    small = jpeg(tiled(footage()[0], 64, 64))
    wide = jpeg(tiled(footage()[1], 8192, 512), quality=30)
    path = write_mjpeg(tmp_path / "widens.avi", [small, small, wide], (64, 64), 10)
    with pytest.raises(ClipError) as info:
        decode(path, SETTINGS)
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert "8192x512 (frame 2) is over the limit of 4096x4096" in str(info.value)


# --- B. too many decoded frames ---------------------------------------------------------------


def many_tiny_frames(path: Path, count: int) -> Path:
    # 16x16 at 1000 fps: 14.4 s, 44 kept frames, a few hundred KB; the same JPEG every time.
    picture = jpeg(tiled(footage()[0][::20, ::20], 16, 16))
    return write_mjpeg(path, [picture] * count, (16, 16), 1000)


def test_decoded_frames_are_capped_not_only_kept_ones(tmp_path: Path) -> None:
    path = many_tiny_frames(tmp_path / "flood.avi", MAX_DECODED_FRAMES + 1)
    with pytest.raises(ClipError) as info:
        decode(path, SETTINGS)
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert f"over the limit of {MAX_DECODED_FRAMES:,} decoded frames" in str(info.value)


def test_decoded_frames_at_the_cap_pass(tmp_path: Path) -> None:
    clip = decode(many_tiny_frames(tmp_path / "full.avi", MAX_DECODED_FRAMES), SETTINGS)
    assert clip.specs.original_nframes == MAX_DECODED_FRAMES
    assert clip.specs.nframes == 44  # 14.4 s sampled at 3 fps


# --- B. the decode child's memory limit -------------------------------------------------------


def decode_or_hog(path: Path, settings: Settings, *, videoname: str | None = None) -> SampledClip:
    """Test-only `decode_fn`, run in the child; the file name says what to do.

    - "hog": reserve 1 GiB more than the child's whole memory budget (not touched: without
      the limit this succeeds and costs nothing, so the test fails rather than the machine);
    - "tight-*": lower the child's own limit to 32 MiB over what it has, then really decode
      that file (a 4096x4096 MJPEG: FFmpeg's own allocations fail; the old code took that
      for damaged packets, skipped them and kept 1 of the 3 frames);
    - anything else: decode it, the clip named after the child's pid.
    """
    if path.name == "hog":
        hog = np.empty(pool_module.DECODE_MEMORY_BYTES + 1024 * MiB, dtype=np.uint8)
        raise AssertionError(f"no memory limit: {hog.nbytes:,} bytes reserved")
    if path.name.startswith("tight-"):
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * resource.getpagesize()
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (size + 32 * MiB, hard))
        return decode_to_jpeg(path, settings, videoname=videoname)
    return decode(path, settings, videoname=f"pid{os.getpid()}")


@pytest.fixture
async def hog_pool() -> AsyncIterator[DecodePool]:
    pool = DecodePool(SETTINGS, decode_fn=decode_or_hog)
    yield pool
    pool.close()


async def test_child_out_of_memory_is_an_error_result_and_the_child_is_replaced(
    hog_pool: DecodePool,
) -> None:
    first = (await hog_pool.decode(GOOD, SETTINGS)).videoname
    with pytest.raises(ClipError) as info:
        await hog_pool.decode(Path("hog"), SETTINGS, "cam4.mp4")
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert "cam4.mp4: the decoder ran out of its memory limit" in str(info.value)
    again = await hog_pool.decode(GOOD, SETTINGS)
    assert again.specs.nframes == 12
    assert again.videoname != first  # a new child


async def test_ffmpeg_out_of_memory_in_the_child(tmp_path: Path, hog_pool: DecodePool) -> None:
    picture = jpeg(tiled(footage()[10], 4096, 4096), quality=50)
    path = write_mjpeg(tmp_path / "tight-4096.avi", [picture] * 3, (4096, 4096), 10)
    # Within the normal limit, the same clip decodes (4096x4096 is the largest allowed).
    same = tmp_path / "square.avi"
    same.write_bytes(path.read_bytes())
    fine = await hog_pool.decode(same, SETTINGS)
    assert (fine.specs.width, fine.specs.height, fine.specs.original_nframes) == (320, 320, 3)
    first = fine.videoname
    with pytest.raises(ClipError) as info:
        await hog_pool.decode(path, SETTINGS, "cam5.avi")
    # FFmpeg's ENOMEM, its EAGAIN for a thread it cannot start, numpy's MemoryError: all of
    # them are this (15 of 15 runs went through one of those; none crashed the child).
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED, info.value
    assert "the decoder ran out of its memory limit" in str(info.value)
    assert "cam5.avi" in str(info.value)
    again = await hog_pool.decode(GOOD, SETTINGS)
    assert again.specs.nframes == 12
    assert again.videoname != first  # the child with the lowered limit is gone
