"""The ONNX model pack: load it once, run it on a clip's frames, return per-frame evidence.

Three models, all built from weights that ship inside registry packages (see
models/manifest.json and docs/models.md):

- `detector`: SSD-MobileNetV2 trained on COCO. Resize and NMS run inside the graph; it never
  reports a score below 0.30, so that is the floor of what we return.
- `imagenet`: EfficientNet-Lite3 (int8) ImageNet-1k classifier; we use its spider and spider
  web classes.
- `text`: PP-OCRv4 text detector (a DB probability map), turned into a 0..1 score by
  `text_line_score`, a heuristic line-shape filter.

No Faust here: `ModelPack.analyse(frames)` is a plain call. Sessions are created once, at
`ModelPack.load`, with explicit thread settings. Pre- and post-processing are pure numpy
functions so tests can check them without a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from PIL import Image
from scipy import ndimage

from streams.errors import ClipError, ConfigError, ErrorCode

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_ROLES = ("detector", "imagenet", "text")

# The detector graph applies this floor itself; filtering again keeps the contract explicit.
DETECTION_FLOOR = 0.30
# FACTS.md: batch 8 on 2 threads is the sweet spot for a small CNN; larger batches thrash the cache.
BATCH = 8
# Burned-in text (camera names, timestamps) is static, so the text detector, a quarter of a
# clip's inference cost, looks at a few frames spread over the clip instead of all of them.
TEXT_FRAMES = 4

IMAGENET_SIZE = 280
# ImageNet-1k indices: 70 harvestman, 72-77 the true spiders (71 is the scorpion), 815 spider web.
IMAGENET_SPIDER = (70, 72, 73, 74, 75, 76, 77)
IMAGENET_SPIDER_WEB = (815,)

# DB post-processing constants as PaddleOCR ships them (det_db_thresh, det_db_box_thresh).
TEXT_PIXEL_THRESHOLD = 0.3
TEXT_BOX_THRESHOLD = 0.6
# Heuristic line-shape limits, in pixels of the map (= of the frame at analysis height 320).
# A 10 px timestamp font gives regions 6 px high and 28-38 px wide (date and time apart);
# what else scored 0.8-0.96: window panes in vtest.avi (4x12), a shirt print (14x22), eyes
# in Megamind.avi (6x16, 8x24, 8x26). Width >= 28 px asks for about four characters.
TEXT_MIN_HEIGHT = 5
TEXT_MIN_WIDTH = 28
TEXT_MIN_ASPECT = 2.5

# onnxruntime's exception classes derive from Exception directly, with no common base.
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EPFail,
)

# COCO category ids as the TF Object Detection API numbers them (91 slots, 80 used).
COCO91: Mapping[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip

Frame = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Detection:
    label: str  # COCO name
    score: float
    box: tuple[float, float, float, float]  # normalized x0, y0, x1, y1


@dataclass(frozen=True)
class FrameEvidence:
    detections: tuple[Detection, ...]  # COCO detections >= DETECTION_FLOOR
    # "spider", "spider_web": summed softmax probabilities of those ImageNet classes;
    # "top1_prob" with the name in `imagenet_top1`.
    imagenet: Mapping[str, float]
    # 0..1, heuristic: PP-OCR det map + line-shape filter (text_line_score); None when this frame
    # was not given to the text detector (it sees TEXT_FRAMES frames per clip, see text_frames).
    text: float | None
    imagenet_top1: str = ""  # the top ImageNet class name (its probability: imagenet["top1_prob"])


# ---------------------------------------------------------------- pure pre/post-processing


def check_frames(frames: Sequence[Frame]) -> None:
    for index, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"frame {index}: expected RGB uint8 HxWx3, got {frame.dtype} {frame.shape}"
            )


def text_frames(count: int, most: int = TEXT_FRAMES) -> list[int]:
    """Indices of at most `most` frames spread evenly over `count` (first and last included)."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def batches(frames: Sequence[Frame], size: int = BATCH) -> list[list[Frame]]:
    """Consecutive groups of at most `size` frames that share one shape (stackable)."""
    groups: list[list[Frame]] = []
    for frame in frames:
        if groups and len(groups[-1]) < size and groups[-1][0].shape == frame.shape:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def resize_rgb(frame: Frame, width: int, height: int) -> Frame:
    if frame.shape[:2] == (height, width):
        return frame
    resized = Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def preprocess_detector(frames: Sequence[Frame]) -> Frame:
    """uint8 RGB NHWC at the frames' own size: the graph resizes to 300x300 itself."""
    return np.stack(frames).astype(np.uint8, copy=False)


def postprocess_detector(
    boxes: FloatArray, scores: FloatArray, classes: FloatArray, counts: FloatArray
) -> list[tuple[Detection, ...]]:
    """TF Object Detection API outputs -> per-frame detections, best first.

    Boxes come as [ymin, xmin, ymax, xmax] in 0..1; classes as COCO-91 ids in float.
    """
    result = []
    for b in range(scores.shape[0]):
        found = []
        for i in range(int(counts[b])):
            score = float(scores[b, i])
            label = COCO91.get(round(float(classes[b, i])))
            if score < DETECTION_FLOOR or label is None:
                continue
            y0, x0, y1, x1 = (float(np.clip(v, 0.0, 1.0)) for v in boxes[b, i])
            found.append(Detection(label, score, (x0, y0, x1, y1)))
        found.sort(key=lambda d: -d.score)
        result.append(tuple(found))
    return result


def preprocess_imagenet(frames: Sequence[Frame]) -> Frame:
    """uint8 RGB NHWC 280x280; the int8 graph applies the (x-127)/128 scaling itself.

    The whole frame is squashed to a square rather than centre-cropped: a spider or web on
    the lens can sit anywhere, and a crop would throw away the sides of a 16:9 frame.
    """
    return np.stack([resize_rgb(f, IMAGENET_SIZE, IMAGENET_SIZE) for f in frames])


def imagenet_evidence(
    probs: FloatArray, labels: Sequence[str]
) -> list[tuple[dict[str, float], str]]:
    result = []
    for row in probs:
        top = int(np.argmax(row))
        scores = {
            "spider": float(row[list(IMAGENET_SPIDER)].sum()),
            "spider_web": float(row[list(IMAGENET_SPIDER_WEB)].sum()),
            "top1_prob": float(row[top]),
        }
        result.append((scores, labels[top].split(",")[0]))
    return result


def text_input_size(height: int, width: int) -> tuple[int, int]:
    """The nearest sides that are multiples of 32 (the DB net downsamples by 32)."""
    return max(32, round(height / 32) * 32), max(32, round(width / 32) * 32)


def preprocess_text(frames: Sequence[Frame]) -> FloatArray:
    """RGB uint8 frames -> BGR float32 NCHW in -1..1, sides multiples of 32."""
    height, width = text_input_size(*frames[0].shape[:2])
    stacked = np.stack([resize_rgb(f, width, height) for f in frames])
    bgr = stacked[..., ::-1].astype(np.float32)
    normalized = (bgr / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))


def text_line_score(prob_map: FloatArray) -> float:
    """Heuristic: how sure we are that the frame shows a line of text, 0..1.

    The DB map also lights up on foliage, fences, window panes and textured walls. Printed
    text (an on-screen timestamp, a sign, a number plate) forms compact, horizontal,
    well-filled regions, so only regions with that shape count: at least TEXT_MIN_HEIGHT px
    high and at most a quarter of the frame, at least TEXT_MIN_WIDTH px (about four
    characters) and TEXT_MIN_ASPECT times their height wide, filling at least half of their bounding box, with
    a mean probability of at least TEXT_BOX_THRESHOLD. The score is the best such region's
    mean probability; 0 when none passes.
    """
    binary = prob_map > TEXT_PIXEL_THRESHOLD
    labelled, count = ndimage.label(binary)
    if count == 0:
        return 0.0
    frame_height = prob_map.shape[0]
    best = 0.0
    for index, region in enumerate(ndimage.find_objects(labelled), start=1):
        if region is None:
            continue
        height = region[0].stop - region[0].start
        width = region[1].stop - region[1].start
        mask = labelled[region] == index
        fill = float(mask.mean())
        if not (
            TEXT_MIN_HEIGHT <= height <= frame_height / 4
            and width >= max(TEXT_MIN_WIDTH, TEXT_MIN_ASPECT * height)
            and fill >= 0.5
        ):
            continue
        mean_prob = float(prob_map[region][mask].mean())
        if mean_prob >= TEXT_BOX_THRESHOLD:
            best = max(best, mean_prob)
    return best


# ---------------------------------------------------------------- manifest and sessions


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"model pack manifest {path} not found") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model pack manifest {path} is not valid JSON: {exc}") from exc
    missing = [role for role in MODEL_ROLES if role not in manifest.get("models", {})]
    if missing or "name" not in manifest or "version" not in manifest:
        raise ConfigError(f"model pack manifest {path} lacks name, version or models {missing}")
    return manifest


def verified_file(models_dir: Path, entry: Mapping[str, Any], what: str) -> Path:
    """The file an entry names, after checking it exists and has the recorded sha256."""
    path = models_dir / str(entry["file"])
    if not path.is_file():
        raise ConfigError(f"model pack: {what} file {path} is missing (run models/recipe/build.sh)")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise ConfigError(
            f"model pack: {what} file {path} has sha256 {actual}, manifest expects "
            f"{entry['sha256']}; the file is damaged or not the one the pack was built with"
        )
    return path


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Busy-waiting workers doubled the decoder's time next to them (FACTS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The CPU memory arena stays on: turning it off saved ~600 MB of a worker's resident set but
    # cost 17% more CPU per clip (0.96 vs 1.12 CPU s, side by side on 8 eval clips, 3 rounds).
    return options


def providers() -> list[str]:
    available = ort.get_available_providers()
    gpu = [p for p in ("CUDAExecutionProvider", "ROCMExecutionProvider") if p in available]
    return [*gpu, "CPUExecutionProvider"]


class ModelPack:
    """The three sessions of the pack, created once; `analyse` is safe to call repeatedly."""

    def __init__(
        self,
        name: str,
        version: str,
        sessions: Mapping[str, ort.InferenceSession],
        imagenet_labels: Sequence[str],
    ) -> None:
        self.name = name
        self.version = version
        self._sessions = dict(sessions)
        self._imagenet_labels = list(imagenet_labels)

    @classmethod
    def load(cls, models_dir: Path, threads: int) -> ModelPack:
        manifest = read_manifest(models_dir)
        options = session_options(threads)
        chosen = providers()
        sessions = {}
        for role in MODEL_ROLES:
            path = verified_file(models_dir, manifest["models"][role], role)
            try:
                sessions[role] = ort.InferenceSession(str(path), options, providers=chosen)
            except ORT_ERRORS as exc:
                raise ConfigError(
                    f"model pack: {role} file {path} cannot be loaded: {exc}"
                ) from exc
        labels_path = verified_file(
            models_dir, manifest["models"]["imagenet"]["labels"], "imagenet labels"
        )
        labels = labels_path.read_text().splitlines()
        if len(labels) != 1000:
            raise ConfigError(f"model pack: {labels_path} has {len(labels)} labels, expected 1000")
        log.info(
            "model pack %s %s loaded from %s (providers %s, %d threads)",
            manifest["name"], manifest["version"], models_dir, chosen, threads,
        )  # fmt: skip
        return cls(manifest["name"], manifest["version"], sessions, labels)

    def analyse(self, frames: Sequence[Frame]) -> list[FrameEvidence]:
        """Per-frame evidence for RGB uint8 HxWx3 frames (the decoder gives height ~320)."""
        try:
            check_frames(frames)
        except ValueError as exc:
            raise ClipError(ErrorCode.INFERENCE_FAILED, str(exc)) from exc
        chosen = text_frames(len(frames))
        try:
            text = dict(zip(chosen, self._text_scores([frames[i] for i in chosen]), strict=True))
            evidence: list[FrameEvidence] = []
            for group in batches(frames):
                evidence.extend(self._analyse_batch(group))
        except ORT_ERRORS as exc:
            raise ClipError(ErrorCode.INFERENCE_FAILED, f"onnxruntime failed: {exc}") from exc
        return [replace(e, text=text.get(i)) for i, e in enumerate(evidence)]

    def _text_scores(self, frames: Sequence[Frame]) -> list[float]:
        scores: list[float] = []
        for group in batches(frames):
            (prob_maps,) = self._sessions["text"].run(None, {"x": preprocess_text(group)})
            scores.extend(text_line_score(prob_maps[i, 0]) for i in range(len(group)))
        return scores

    def _analyse_batch(self, frames: Sequence[Frame]) -> list[FrameEvidence]:
        boxes, scores, classes, counts = self._sessions["detector"].run(
            None, {"image_tensor:0": preprocess_detector(frames)}
        )
        detections = postprocess_detector(boxes, scores, classes, counts)
        (probs,) = self._sessions["imagenet"].run(None, {"images": preprocess_imagenet(frames)})
        imagenet = imagenet_evidence(probs, self._imagenet_labels)
        return [
            FrameEvidence(
                detections=detections[i],
                imagenet=imagenet[i][0],
                text=None,
                imagenet_top1=imagenet[i][1],
            )
            for i in range(len(frames))
        ]
