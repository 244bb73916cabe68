"""Build the labelled evaluation clips in eval/clips/ and eval/labels.csv.

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb .clipguard/footage-eval/root
    .venv/bin/pip install scikit-image      # build-time only, not a runtime dependency
    .venv/bin/python eval/make_eval_set.py [OPENCV_DATA_DIR]

OPENCV_DATA_DIR defaults to
.clipguard/footage-eval/root/usr/share/doc/opencv-doc/examples/data. Every clip is cut from
real footage (vtest.avi, tree.avi) or made from a real photo of scikit-image's data module
with a slow pan/zoom and sensor noise, so it looks like a camera clip. eval/PROVENANCE.md
records the sources and licences; the true labels below were set by looking at the frames.
Output is deterministic (fixed noise seed), apart from what libx264 itself does.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SOURCE = ROOT / ".clipguard/footage-eval/root/usr/share/doc/opencv-doc/examples/data"
CLIPS = HERE / "clips"
LABELS = HERE / "labels.csv"

PHOTO_FPS = 10
PHOTO_SECONDS = 4.0
PHOTO_SIZE = (480, 360)
CLIP_SECONDS = 4.0


@dataclass(frozen=True)
class Spec:
    name: str
    labels: tuple[str, ...]
    risk: str
    source: str


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, rate


def read_timed(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def window(frames: list[np.ndarray], rate: Fraction, start_s: float) -> list[np.ndarray]:
    first = round(start_s * rate)
    count = round(CLIP_SECONDS * rate)
    out = frames[first : first + count]
    assert len(out) == count, (start_s, len(out))
    return out


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def overlay_timestamp(frames: list[np.ndarray], rate: Fraction, base_s: int) -> list[np.ndarray]:
    """Burn a camera-style date/time caption in, ticking once a second like a real DVR."""
    height = frames[0].shape[0]
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(
            size=max(12, height // 20)
        )
    except TypeError:  # Pillow without FreeType: the bitmap font still gives real glyphs
        font = ImageFont.load_default()
    out = []
    for index, frame in enumerate(frames):
        seconds = base_s + int(index / rate)
        hh, mm, ss = 14 + seconds // 3600, (seconds // 60) % 60, seconds % 60
        caption = f"2024-03-05  {hh:02d}:{mm:02d}:{ss:02d}  CAM 03"
        image = Image.fromarray(frame)
        ImageDraw.Draw(image).text(
            (8, 6), caption, font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0)
        )
        out.append(np.asarray(image))
    return out


def photo_clip(photo: np.ndarray, seed: int) -> list[np.ndarray]:
    """A still photo as a fixed camera with a slow digital zoom/pan, sensor noise and flicker."""
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    photo = photo[..., :3]
    h, w = photo.shape[:2]
    aspect = PHOTO_SIZE[0] / PHOTO_SIZE[1]
    # Pad a photo that is not 4:3 with its own border colour (a wall around a sign), so the
    # whole subject stays in view instead of being cropped away.
    if w / h < aspect:
        new_w = round(h * aspect)
        pad = np.empty((h, new_w, 3), np.uint8)
        pad[:] = np.median(np.concatenate([photo[:, 0], photo[:, -1]]), axis=0)
        pad[:, (new_w - w) // 2 : (new_w - w) // 2 + w] = photo
        photo, w = pad, new_w
    elif w / h > aspect:
        new_h = round(w / aspect)
        pad = np.empty((new_h, w, 3), np.uint8)
        pad[:] = np.median(np.concatenate([photo[0], photo[-1]]), axis=0)
        pad[(new_h - h) // 2 : (new_h - h) // 2 + h] = photo
        photo, h = pad, new_h
    rng = np.random.default_rng(seed)
    image = Image.fromarray(photo)
    count = round(PHOTO_FPS * PHOTO_SECONDS)
    frames = []
    for index in range(count):
        progress = index / (count - 1)
        zoom = 1.0 + 0.10 * progress
        cw, ch = w / zoom, h / zoom
        cx = w / 2 + (w - cw) / 2 * 0.6 * (progress - 0.5) * 2
        cy = h / 2
        box = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
        frame = np.asarray(
            image.resize(PHOTO_SIZE, Image.Resampling.BILINEAR, box=box), dtype=np.float32
        )
        gain = 1.0 + 0.02 * np.sin(2 * np.pi * index / 17.0)
        noise = rng.normal(0.0, 3.0, frame.shape)
        frames.append(np.clip(frame * gain + noise, 0, 255).astype(np.uint8))
    return frames


def write_mp4(
    path: Path, frames: list[np.ndarray], rate: Fraction, times: list[float] | None = None
) -> None:
    """H.264 mp4; `times` (seconds) keeps a variable-rate source's real capture times."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "28", "preset": "medium", "tune": "film"}
        for index, frame in enumerate(frames):
            video = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(frame[: stream.height, : stream.width]), format="rgb24"
            )
            if times is not None:
                video.pts = round((times[index] - times[0]) * rate)
                video.time_base = Fraction(1) / rate
            container.mux(stream.encode(video))
        container.mux(stream.encode(None))


def main(source: Path) -> None:
    import skimage.io  # build-time only

    CLIPS.mkdir(parents=True, exist_ok=True)
    specs: list[Spec] = []

    def add(
        name: str,
        frames: list[np.ndarray],
        rate: Fraction,
        spec: Spec,
        times: list[float] | None = None,
    ) -> None:
        write_mp4(CLIPS / name, frames, rate, times)
        specs.append(spec)

    vtest, vrate = read_video(source / "vtest.avi")  # 768x576, 10 fps, 79.5 s
    scene = ("person", "vehicule", "intrusion")  # pedestrians; parked vans top right
    for start in (0, 12, 26, 40, 54, 66):
        name = f"vtest_scene_{start:02d}s.mp4"
        frames = [resize(f, (480, 360)) for f in window(vtest, vrate, start)]
        add(name, frames, vrate, Spec(name, scene, "intrusion", f"vtest.avi {start}-{start + 4}s"))
    name = "vtest_scene_20s_timestamp.mp4"
    frames = overlay_timestamp([resize(f, (480, 360)) for f in window(vtest, vrate, 20)], vrate, 20)
    add(
        name, frames, vrate, Spec(name, (*scene, "text"), "intrusion", "vtest.avi 20-24s + caption")
    )

    # Harder cases: the same camera's low-resolution substream (people 15-25 px tall), and
    # a native-pixel crop of the parked vans while people walk past them.
    name = "vtest_lowres_30s.mp4"
    frames = [resize(f, (240, 180)) for f in window(vtest, vrate, 30)]
    add(name, frames, vrate, Spec(name, scene, "intrusion", "vtest.avi 30-34s scaled to 240x180"))
    name = "vtest_vans_15s.mp4"
    frames = [np.ascontiguousarray(f[0:288, 384:768]) for f in window(vtest, vrate, 15)]
    src = "vtest.avi 15-19s, crop x384-768 y0-288"
    add(name, frames, vrate, Spec(name, scene, "intrusion", src))

    # Quarter crops (384x288, native pixels) of moments when nobody crosses them: a real
    # empty scene with the real sensor noise and compression of the footage.
    empty = (
        ("bottomleft", (288, 576, 0, 384), (2.0, 14.0, 36.0)),
        ("bottomright", (288, 576, 384, 768), (29.2,)),
    )
    for where, (y0, y1, x0, x1), starts in empty:
        for start in starts:
            name = f"vtest_empty_{where}_{int(start):02d}s.mp4"
            frames = [np.ascontiguousarray(f[y0:y1, x0:x1]) for f in window(vtest, vrate, start)]
            src = f"vtest.avi {start:g}-{start + 4:g}s, crop x{x0}-{x1} y{y0}-{y1}"
            add(name, frames, vrate, Spec(name, ("NOTHING",), "safe", src))
    name = "vtest_empty_bottomleft_47s_timestamp.mp4"
    frames = [np.ascontiguousarray(f[288:576, 0:384]) for f in window(vtest, vrate, 47.0)]
    add(
        name,
        overlay_timestamp(frames, vrate, 47),
        vrate,
        Spec(name, ("text", "NOTHING"), "safe", "vtest.avi 47-51s, crop x0-384 y288-576 + caption"),
    )

    # tree.avi declares 15 fps but holds only 68 real frames (~2.3 a second, 29.6 s): keep
    # their capture times rather than invent frames.
    tree = read_timed(source / "tree.avi")
    for start in (0, 10, 20):
        name = f"tree_{start:02d}s.mp4"
        picked = [(t, f) for t, f in tree if start <= t < start + CLIP_SECONDS]
        add(
            name,
            [f for _, f in picked],
            Fraction(15),
            Spec(name, ("plant", "wind"), "safe", f"tree.avi {start}-{start + 4}s"),
            times=[t for t, _ in picked],
        )

    data = Path(skimage.io.__file__).resolve().parent.parent / "data"
    photos = (
        ("astronaut", ("person", "intrusion"), "intrusion"),
        ("chelsea", ("animal",), "danger"),
        ("motorcycle_left", ("vehicule", "intrusion"), "intrusion"),
        ("coffee", ("NOTHING",), "safe"),
        ("brick", ("NOTHING",), "safe"),
        ("grass", ("NOTHING",), "safe"),
        ("text", ("text", "NOTHING"), "safe"),
    )
    for seed, (photo, labels, risk) in enumerate(photos):
        name = f"photo_{photo}.mp4"
        image = skimage.io.imread(data / f"{photo}.png")
        add(
            name,
            photo_clip(image, seed),
            Fraction(PHOTO_FPS),
            Spec(name, labels, risk, f"scikit-image data/{photo}.png, pan/zoom + noise"),
        )

    with LABELS.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["clip", "labels", "risk", "source"])
        for spec in specs:
            writer.writerow([spec.name, ";".join(spec.labels), spec.risk, spec.source])
    total = sum(p.stat().st_size for p in CLIPS.glob("*.mp4"))
    print(f"{len(specs)} clips, {total / 1e6:.2f} MB in {CLIPS}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
