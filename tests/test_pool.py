"""The decode pool: real child processes that really crash, hang, and recover."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages import pool as pool_module
from streams.stages.decode import SampledClip, decode
from streams.stages.pool import MAX_DECODED_BYTES, DecodePool, decode_to_jpeg

CLIPS = Path(__file__).parent / "fixtures" / "clips"
GOOD = CLIPS / "people_h264.mp4"
SETTINGS = Settings(decode_timeout_s=20.0)


# Test-only stand-ins for `decode`, run inside the child. A file name says what to do, so
# the same pool can be made to crash and then shown to work again.
def decode_or_misbehave(
    path: Path, settings: Settings, *, videoname: str | None = None
) -> SampledClip:
    if path.name == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if path.name == "exit":
        os._exit(3)
    if path.name == "hang":
        time.sleep(3600)
    if path.name == "bug":
        raise ValueError("a bug")
    return decode(path, settings, videoname=videoname)


@pytest.fixture
async def pool() -> AsyncIterator[DecodePool]:
    pool = DecodePool(SETTINGS, decode_fn=decode_or_misbehave)
    yield pool
    pool.close()


async def test_decodes_in_a_child_like_in_process(pool: DecodePool) -> None:
    clip = await pool.decode(GOOD, SETTINGS, "cam1.mp4")
    here = decode(GOOD, SETTINGS, videoname="cam1.mp4")
    assert clip.videoname == "cam1.mp4"
    assert clip.specs == here.specs
    assert clip.timestamps == here.timestamps
    assert all((a == b).all() for a, b in zip(clip.frames, here.frames, strict=True))


async def test_clip_errors_come_back_with_their_code(pool: DecodePool) -> None:
    with pytest.raises(ClipError) as info:
        await pool.decode(CLIPS / "audio_only.m4a", SETTINGS, "a.m4a")
    assert info.value.code == ErrorCode.NO_VIDEO_STREAM
    assert "a.m4a" in str(info.value)


@pytest.mark.parametrize("how", ["segfault", "exit"])
async def test_crashed_child_fails_that_clip_only(pool: DecodePool, how: str) -> None:
    assert (await pool.decode(GOOD, SETTINGS)).specs.nframes == 12
    with pytest.raises(ClipError) as info:
        await pool.decode(Path(how), SETTINGS, "cam9.mp4")
    assert info.value.code == ErrorCode.DECODER_CRASHED
    assert "cam9.mp4" in str(info.value)
    assert (await pool.decode(GOOD, SETTINGS)).specs.nframes == 12


async def test_stuck_child_times_out_and_is_replaced() -> None:
    quick = Settings(decode_timeout_s=1.0)
    pool = DecodePool(quick, decode_fn=decode_or_misbehave)
    try:
        with pytest.raises(ClipError) as info:
            await pool.decode(Path("hang"), quick, "stuck.mp4")
        assert info.value.code == ErrorCode.DECODE_TIMEOUT
        assert "stuck.mp4" in str(info.value)
        assert (await pool.decode(GOOD, SETTINGS)).specs.nframes == 12
    finally:
        pool.close()


async def test_unexpected_exception_is_an_internal_error(pool: DecodePool) -> None:
    with pytest.raises(ClipError) as info:
        await pool.decode(Path("bug"), SETTINGS)
    assert info.value.code == ErrorCode.INTERNAL
    assert (await pool.decode(GOOD, SETTINGS)).specs.nframes == 12


def test_decode_to_jpeg_keeps_sizes_and_frames() -> None:
    here = decode(GOOD, SETTINGS)
    clip = decode_to_jpeg(GOOD, SETTINGS, videoname="cam1.mp4")
    assert (clip.specs, clip.timestamps, clip.frames) == (here.specs, here.timestamps, ())
    assert len(clip.jpeg_frames) == 12
    assert 200_000 < sum(map(len, clip.jpeg_frames)) < MAX_DECODED_BYTES  # ~390 KB


def test_jpeg_frames_over_the_message_limit_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the decoded topic could not carry is an error result, not a message the broker
    # refuses (the clip would get neither a result nor a dead letter).
    monkeypatch.setattr(pool_module, "MAX_DECODED_BYTES", 100_000)
    with pytest.raises(ClipError) as info:
        decode_to_jpeg(GOOD, SETTINGS, videoname="cam1.mp4")
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    message = str(info.value)
    assert re.fullmatch(
        r"cam1\.mp4: the sampled frames take \d{3},\d{3} bytes, over the limit of 100,000 bytes",
        message,
    ), message


async def test_two_workers_decode_side_by_side() -> None:
    two = Settings(decode_workers=2, decode_timeout_s=20.0)
    pool = DecodePool(two, decode_fn=decode_or_misbehave)
    try:
        results = await asyncio.gather(
            pool.decode(GOOD, two),
            pool.decode(Path("exit"), two),
            pool.decode(CLIPS / "tree_h264.mp4", two),
            return_exceptions=True,
        )
        assert isinstance(results[0], SampledClip) and results[0].specs.nframes == 12
        assert isinstance(results[1], ClipError)
        assert results[1].code == ErrorCode.DECODER_CRASHED
        assert isinstance(results[2], SampledClip) and results[2].specs.nframes == 12
    finally:
        pool.close()


# --- random damage ----------------------------------------------------------------------------

SOURCES = {name: (CLIPS / name).read_bytes() for name in ("people_h264.mp4", "people_mjpeg.avi")}
_shared_pool: DecodePool | None = None


def shared_pool() -> DecodePool:
    # Hypothesis runs every example in the same event loop; one pool for all of them keeps
    # the test about the decoder, not about process start-up.
    global _shared_pool
    if _shared_pool is None:
        _shared_pool = DecodePool(SETTINGS)
    return _shared_pool


@st.composite
def damaged_clip(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SOURCES)))
    data = bytearray(SOURCES[name])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "zero", "cut", "splice"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "zero":
            length = draw(st.integers(1, 4096))
            data[position : position + length] = bytes(len(data[position : position + length]))
        elif kind == "cut":
            del data[position:]
        else:
            length = draw(st.integers(1, 2048))
            data[position:position] = draw(st.binary(min_size=length, max_size=length))
    return name, bytes(data)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same 40 damaged files on every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sample=damaged_clip())
async def test_damaged_clips_give_clip_errors_and_the_pool_keeps_working(
    tmp_path: Path, sample: tuple[str, bytes]
) -> None:
    name, data = sample
    path = tmp_path / ("damaged_" + name)
    path.write_bytes(data)
    pool = shared_pool()
    try:
        clip = await pool.decode(path, SETTINGS)
    except ClipError as error:
        # DECODER_CRASHED is allowed: it is what FFmpeg crashing looks like, contained.
        assert error.code in (
            ErrorCode.INVALID_VIDEO,
            ErrorCode.NO_VIDEO_STREAM,
            ErrorCode.UNSUPPORTED_CODEC,
            ErrorCode.NO_FRAMES,
            ErrorCode.LIMIT_EXCEEDED,
            ErrorCode.DECODER_CRASHED,
        ), error
    else:
        assert 1 <= clip.specs.nframes <= 40
        assert all(f.shape == (clip.specs.height, clip.specs.width, 3) for f in clip.frames)
    assert (await pool.decode(GOOD, SETTINGS)).specs.nframes == 12


def teardown_module() -> None:
    if _shared_pool is not None:
        _shared_pool.close()
