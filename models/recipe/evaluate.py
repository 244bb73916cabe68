"""Measure what shrinking a model costs in accuracy: reference vs candidate ONNX on real images.

Images: scikit-image's data photos and frames of OpenCV's vtest.avi (Debian opencv-doc),
resized to the analysis height of 320 like the decoder does. Prints, per model pair, the
largest score change of matched outputs and whether the set of confident answers agrees.

    python evaluate.py detector REF.onnx CAND.onnx --video vtest.avi
    python evaluate.py imagenet REF.onnx CAND.onnx --video vtest.avi
    python evaluate.py text REF.onnx CAND.onnx --video vtest.avi
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from streams.stages import models as M


def photos() -> dict[str, np.ndarray]:
    images = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "motorcycle_left": data.stereo_motorcycle()[0],
        "coffee": data.coffee(),
        "rocket": data.rocket(),
    }
    for gray in ("brick", "grass", "text", "camera"):
        g = getattr(data, gray)()
        images[gray] = np.repeat(g[..., None], 3, axis=2)
    return images


def video_frames(path: Path, every: int = 8, limit: int = 40) -> dict[str, np.ndarray]:
    import av

    frames = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames[f"{path.stem}#{i}"] = frame.to_ndarray(format="rgb24")
            if len(frames) >= limit:
                break
    return frames


def at_320(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return M.resize_rgb(np.ascontiguousarray(image[..., :3]), max(32, round(w * 320 / h)), 320)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), M.session_options(2), providers=["CPUExecutionProvider"])


def run(kind: str, sess: ort.InferenceSession, frame: np.ndarray):
    if kind == "detector":
        out = sess.run(None, {"image_tensor:0": M.preprocess_detector([frame])})
        return M.postprocess_detector(*out)[0]
    if kind == "imagenet":
        return sess.run(None, {"images": M.preprocess_imagenet([frame])})[0][0]
    return sess.run(None, {"x": M.preprocess_text([frame])})[0][0, 0]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def compare(kind: str, a, b) -> tuple[float, float, bool]:
    """(largest change of a matched score, best score that appeared or vanished, agreement)."""
    if kind == "detector":
        matched, unmatched = 0.0, 0.0
        for ours, theirs in ((a, b), (b, a)):
            for d in ours:
                same = [e for e in theirs if e.label == d.label and iou(e.box, d.box) >= 0.5]
                if same:
                    matched = max(matched, min(abs(e.score - d.score) for e in same))
                else:
                    unmatched = max(unmatched, d.score)
        confident = lambda ds: sorted({d.label for d in ds if d.score >= 0.5})  # noqa: E731
        return matched, unmatched, confident(a) == confident(b)
    if kind == "imagenet":
        a = a / 255.0 if a.dtype == np.uint8 else a  # the unconverted tflite output is uint8
        return float(np.abs(a - b).max()), 0.0, int(a.argmax()) == int(b.argmax())
    score_a, score_b = M.text_line_score(a), M.text_line_score(b)
    return abs(score_a - score_b), 0.0, (score_a > 0) == (score_b > 0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["detector", "imagenet", "text"])
    parser.add_argument("reference", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--video", type=Path, action="append", default=[])
    args = parser.parse_args()
    images = photos()
    for video in args.video:
        images.update(video_frames(video))
    ref, cand = session(args.reference), session(args.candidate)
    worst, worst_unmatched, disagreements = 0.0, 0.0, []
    times = {"ref": 0.0, "cand": 0.0}
    for name, image in images.items():
        frame = at_320(image)
        t0 = time.perf_counter()
        a = run(args.kind, ref, frame)
        t1 = time.perf_counter()
        b = run(args.kind, cand, frame)
        t2 = time.perf_counter()
        times["ref"] += t1 - t0
        times["cand"] += t2 - t1
        delta, unmatched, agree = compare(args.kind, a, b)
        worst, worst_unmatched = max(worst, delta), max(worst_unmatched, unmatched)
        if not agree:
            disagreements.append(name)
        if args.kind == "detector" and name in ("astronaut", "chelsea", "motorcycle_left", "brick"):
            print(
                f"  {name}: ref {[(d.label, round(d.score, 3)) for d in a]}"
                f" cand {[(d.label, round(d.score, 3)) for d in b]}"
            )
    n = len(images)
    print(
        f"{args.kind}: {n} images, max matched score delta {worst:.4f}, best unmatched "
        f"score {worst_unmatched:.3f}, disagreements at >=0.5 / top-1: {disagreements}"
    )
    print(
        f"  ms/frame (1 frame, 2 threads, incl. first-run warm-up): "
        f"ref {times['ref'] / n * 1000:.1f}, cand {times['cand'] / n * 1000:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
