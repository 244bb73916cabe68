"""The decode stage on real footage (tests/fixtures/clips, see PROVENANCE.md) and on garbage."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages.decode import (
    SampledClip,
    VideoSpecs,
    analysis_size,
    decode,
    max_analysis_width,
)
from streams.stages.frames import from_jpeg, to_jpeg

CLIPS = Path(__file__).parent / "fixtures" / "clips"
SETTINGS = Settings()

WALK_TIMES = (0.0, 0.4, 0.7, 1.0, 1.4, 1.7, 2.0, 2.4, 2.7, 3.0, 3.4, 3.7)

EXPECTED = {
    # 640x360, 10 fps, 40 frames: 3 fps sampling keeps the first frame at or after k/3 s.
    "people_h264.mp4": (VideoSpecs(568, 320, 3.0, 12, 4.0, 640, 360, 10.0, 40), WALK_TIMES),
    "people_h264.mov": (VideoSpecs(568, 320, 3.0, 12, 4.0, 640, 360, 10.0, 40), WALK_TIMES),
    # Stored 360x640 with a 90-degree display matrix: sizes are as displayed.
    "people_rotated_h264.mp4": (
        VideoSpecs(568, 320, 3.0, 12, 4.0, 640, 360, 10.0, 40),
        WALK_TIMES,
    ),
    "people_h265.mkv": (VideoSpecs(568, 320, 3.0, 9, 3.0, 640, 360, 10.0, 30), WALK_TIMES[:9]),
    "people_mjpeg.avi": (VideoSpecs(568, 320, 3.0, 6, 2.0, 640, 360, 10.0, 20), WALK_TIMES[:6]),
    # 320x240 is under the analysis height: kept as is. Its ~2.3 fps is under the sampling
    # rate, so every frame is kept, once, at its own irregular time.
    "tree_h264.mp4": (
        VideoSpecs(320, 240, 2.28, 12, 5.267, 320, 240, 2.28, 12),
        (0.0, 0.733, 1.133, 1.6, 2.067, 2.467, 2.867, 3.267, 3.733, 4.067, 4.467, 4.8),
    ),
}


def decode_fixture(name: str, settings: Settings = SETTINGS) -> SampledClip:
    return decode(CLIPS / name, settings)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_specs_and_sample_times(name: str) -> None:
    specs, times = EXPECTED[name]
    clip = decode_fixture(name)
    assert clip.specs == specs
    assert clip.timestamps == times
    assert clip.videoname == name
    assert clip.filesize == (CLIPS / name).stat().st_size
    assert len(clip.frames) == specs.nframes
    for frame in clip.frames:
        assert frame.shape == (specs.height, specs.width, 3)
        assert frame.dtype == np.uint8
        assert frame.flags["C_CONTIGUOUS"]


def test_videoname_overrides_the_file_name() -> None:
    assert decode(CLIPS / "people_h264.mp4", SETTINGS, videoname="cam7.mp4").videoname == "cam7.mp4"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((640, 360), (568, 320)),  # the published example
        ((1920, 1080), (568, 320)),
        ((1280, 720), (568, 320)),
        ((768, 576), (426, 320)),  # 426.67 -> nearest even 426
        ((360, 640), (180, 320)),  # portrait
        ((320, 240), (320, 240)),  # never upscaled
        ((333, 320), (333, 320)),  # exactly the analysis height: untouched
        ((640, 480), (426, 320)),
        ((176, 144), (176, 144)),  # QCIF: fits the box
        ((854, 480), (570, 320)),  # near-16:9 sizes keep what the height alone gives them
        ((1366, 768), (570, 320)),
        # Wider than 16:9: the width binds (at most 570 for 320), the height follows.
        ((4096, 320), (570, 44)),  # the tester's clip: 44.53 -> 44
        ((2560, 1080), (570, 240)),  # 21:9
        ((600, 200), (570, 190)),  # wide and short: scaled down, not kept
        ((4096, 1), (570, 1)),  # never upscaled, not even to an even size
        ((320, 4096), (24, 320)),  # tall and narrow: the height binds, as before
    ],
)
def test_analysis_size(source: tuple[int, int], expected: tuple[int, int]) -> None:
    assert analysis_size(*source, 320) == expected


def test_max_analysis_width_is_16_9_rounded_up_to_even() -> None:
    assert [max_analysis_width(h) for h in (180, 240, 320, 360, 480)] == [320, 428, 570, 640, 854]


def _old_analysis_size(width: int, height: int, analysis_height: int) -> tuple[int, int]:
    """The rule before the width bound: height at most analysis_height, width unbounded."""
    if height <= analysis_height:
        return width, height
    return max(2, 2 * round(width * analysis_height / height / 2)), analysis_height


@given(
    width=st.integers(1, 8192),
    height=st.integers(1, 8192),
    analysis_height=st.sampled_from([180, 240, 320, 360, 480]),
)
# 22 * 180 / 264 is 15.0 exactly, 22 * (180 / 264) is 14.999...: the old order of operations
# rounds it to 16, the other to 14.
@example(width=22, height=264, analysis_height=180)
def test_analysis_size_fits_the_box_and_moves_no_normal_source(
    width: int, height: int, analysis_height: int
) -> None:
    out_w, out_h = analysis_size(width, height, analysis_height)
    max_width = max_analysis_width(analysis_height)
    assert 1 <= out_w <= min(width, max_width)
    assert 1 <= out_h <= min(height, analysis_height)
    if width <= max_width and height <= analysis_height:
        assert (out_w, out_h) == (width, height)
        return
    # Scaled: one side is the box's, the other keeps the aspect ratio to the nearest even
    # number (at least 2, never more than the source).
    if width * analysis_height <= max_width * height:  # the height binds
        assert out_h == analysis_height
        assert abs(out_w - width * analysis_height / height) <= 1 or out_w in (2, width)
    else:
        assert out_w == max_width
        assert abs(out_h - height * max_width / width) <= 1 or out_h in (2, height)
    # Every source the old rule kept within the width bound (16:9 and narrower) is unchanged.
    old_w, old_h = _old_analysis_size(width, height, analysis_height)
    if old_w <= max_width and width >= 2:
        assert (out_w, out_h) == (old_w, old_h)


def test_rotation_metadata_is_applied_the_right_way_round() -> None:
    plain = decode_fixture("people_h264.mp4").frames
    rotated = decode_fixture("people_rotated_h264.mp4").frames
    for a, b in zip(plain, rotated, strict=True):
        same = np.abs(a.astype(int) - b).mean()
        upside_down = np.abs(a.astype(int) - np.rot90(b, 2)).mean()
        assert same < 6 < upside_down


def test_same_picture_from_every_container() -> None:
    mp4 = decode_fixture("people_h264.mp4").frames
    mov = decode_fixture("people_h264.mov").frames
    assert all(np.array_equal(a, b) for a, b in zip(mp4, mov, strict=True))


def test_frames_show_the_scene_not_a_blank() -> None:
    clip = decode_fixture("people_h264.mp4")
    # Pedestrians move between samples: consecutive frames differ, and frames have detail.
    assert all(f.std() > 20 for f in clip.frames)
    assert np.abs(clip.frames[0].astype(int) - clip.frames[-1]).mean() > 2


def test_sample_fps_setting_changes_the_sampling() -> None:
    clip = decode_fixture("people_h264.mp4", Settings(sample_fps=1.0))
    assert clip.timestamps == (0.0, 1.0, 2.0, 3.0)
    assert clip.specs.fps == 1.0
    every = decode_fixture("people_h264.mp4", Settings(sample_fps=50.0))
    assert every.specs.nframes == 40  # never more frames than the source has


def test_analysis_height_setting() -> None:
    clip = decode_fixture("people_h264.mp4", Settings(analysis_height=180))
    assert (clip.specs.width, clip.specs.height) == (320, 180)


def test_decoded_clip_message_stays_under_one_megabyte() -> None:
    clip = decode_fixture("people_h264.mp4")  # 4 s at 3 fps
    jpegs = to_jpeg(clip.frames, SETTINGS.jpeg_quality)
    assert sum(map(len, jpegs)) < 1_000_000 - 10_000  # room for the other message fields
    back = from_jpeg(jpegs)
    assert [f.shape for f in back] == [f.shape for f in clip.frames]
    assert all(np.abs(a.astype(int) - b).mean() < 4 for a, b in zip(back, clip.frames, strict=True))


def test_damaged_jpeg_is_a_malformed_message() -> None:
    jpeg = to_jpeg(decode_fixture("tree_h264.mp4").frames[:1], 85)[0]
    with pytest.raises(ClipError) as info:
        from_jpeg([jpeg[:20]])
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code", "words"),
    [
        ({"max_duration_s": 1.0}, ErrorCode.LIMIT_EXCEEDED, "over the limit of 1 s"),
        ({"max_width": 600}, ErrorCode.LIMIT_EXCEEDED, "640x360 is over the limit of 600x4096"),
        ({"max_height": 300}, ErrorCode.LIMIT_EXCEEDED, "over the limit of 4096x300"),
        ({"max_frames": 5}, ErrorCode.LIMIT_EXCEEDED, "over the limit of 5 frames"),
        ({"max_clip_bytes": 1000}, ErrorCode.SOURCE_TOO_LARGE, "over the limit of 1,000 bytes"),
    ],
)
def test_limits(overrides: dict[str, float], code: ErrorCode, words: str) -> None:
    with pytest.raises(ClipError) as info:
        decode_fixture("people_h264.mp4", Settings(**overrides))
    assert info.value.code == code
    assert "people_h264.mp4" in str(info.value)
    assert words in str(info.value)


def test_limits_hold_when_the_header_has_no_duration() -> None:
    # tree.avi's kind of lie, in a container without a duration: Matroska stores none per
    # stream, and our clip's limit check must still stop it while decoding.
    with pytest.raises(ClipError) as info:
        decode_fixture("people_h265.mkv", Settings(max_duration_s=2.0))
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED


def test_limits_that_fit_pass() -> None:
    clip = decode_fixture("people_h264.mp4", Settings(max_duration_s=4.0, max_frames=12))
    assert clip.specs.nframes == 12


# --- broken inputs --------------------------------------------------------------------------


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def error_of(path: Path, settings: Settings = SETTINGS) -> ClipError:
    with pytest.raises(ClipError) as info:
        decode(path, settings)
    assert path.name in str(info.value)
    return info.value


def test_audio_only_container_has_no_video_stream() -> None:
    error = error_of(CLIPS / "audio_only.m4a")
    assert error.code == ErrorCode.NO_VIDEO_STREAM
    assert "audio (aac)" in str(error)


def test_empty_file(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "empty.mp4", b""))
    assert error.code == ErrorCode.INVALID_VIDEO
    assert "empty" in str(error)


def test_text_file(tmp_path: Path) -> None:
    text = b"camera 7 alarm log\nnothing to see here\n" * 50
    for name in ("notes.txt", "notes.mp4"):
        assert error_of(write(tmp_path, name, text)).code == ErrorCode.INVALID_VIDEO


def test_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(7)
    for size in (1, 100, 4096, 200_000):
        data = bytes(rng.getrandbits(8) for _ in range(size))
        assert error_of(write(tmp_path, f"random{size}.mp4", data)).code == ErrorCode.INVALID_VIDEO


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "gone.mp4").code == ErrorCode.SOURCE_NOT_FOUND


def test_unknown_codec(tmp_path: Path) -> None:
    data = (CLIPS / "people_mjpeg.avi").read_bytes().replace(b"MJPG", b"ZZZZ")
    error = error_of(write(tmp_path, "odd_codec.avi", data))
    assert error.code == ErrorCode.UNSUPPORTED_CODEC


def test_still_image_is_not_a_clip(tmp_path: Path) -> None:
    jpeg = to_jpeg(decode_fixture("tree_h264.mp4").frames[:1], 85)[0]
    assert error_of(write(tmp_path, "snapshot.jpg", jpeg)).code == ErrorCode.INVALID_VIDEO


def test_playlist_is_refused_before_it_is_followed(tmp_path: Path) -> None:
    # An HLS playlist would make FFmpeg read the files it names; we accept only real containers.
    target = CLIPS / "people_h264.mp4"
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\n{target}\n#EXT-X-ENDLIST\n"
    error = error_of(write(tmp_path, "list.m3u8", playlist.encode()))
    assert error.code == ErrorCode.INVALID_VIDEO


# Where the index sits decides what a cut does: MP4 keeps it at the end (cut -> unreadable,
# INVALID_VIDEO); Matroska and AVI can be read up to the cut (fewer frames, or NO_FRAMES when
# the cut falls inside the first frame).
@pytest.mark.parametrize("name", ["people_h264.mp4", "people_h265.mkv", "people_mjpeg.avi"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_truncated_file_is_invalid_or_keeps_the_frames_before_the_cut(
    tmp_path: Path, name: str, fraction: float
) -> None:
    data = (CLIPS / name).read_bytes()
    path = write(tmp_path, "cut_" + name, data[: int(len(data) * fraction)])
    full = decode_fixture(name)
    try:
        clip = decode(path, SETTINGS)
    except ClipError as error:
        assert error.code in (ErrorCode.INVALID_VIDEO, ErrorCode.NO_FRAMES)
        assert path.name in str(error)
        return
    assert 1 <= clip.specs.nframes <= full.specs.nframes
    assert clip.specs.original_nframes < full.specs.original_nframes
    assert clip.timestamps == full.timestamps[: clip.specs.nframes]


def test_truncated_mp4_is_invalid(tmp_path: Path) -> None:
    data = (CLIPS / "people_h264.mp4").read_bytes()
    error = error_of(write(tmp_path, "cut.mp4", data[: len(data) // 2]))
    assert error.code == ErrorCode.INVALID_VIDEO


def test_truncated_avi_keeps_the_frames_before_the_cut(tmp_path: Path) -> None:
    data = (CLIPS / "people_mjpeg.avi").read_bytes()
    clip = decode(write(tmp_path, "cut.avi", data[: len(data) // 2]), SETTINGS)
    assert 8 <= clip.specs.original_nframes < 20
    assert clip.timestamps == WALK_TIMES[: clip.specs.nframes]
    assert 3 <= clip.specs.nframes < 6


def test_cut_inside_the_first_frame_has_no_frames(tmp_path: Path) -> None:
    data = (CLIPS / "people_h265.mkv").read_bytes()
    error = error_of(write(tmp_path, "cut.mkv", data[: len(data) * 3 // 10]))
    assert error.code == ErrorCode.NO_FRAMES
