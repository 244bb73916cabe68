"""`detector`: SSD-MobileNetV2 trained on COCO, the source of `FrameEvidence.detections`.

Resize to 300x300 and NMS run inside the graph; it never reports a score below 0.30, so that
is the floor of what we return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streams.stages.models.base import FloatArray, Frame, OnnxModel, Session

# The detector graph applies this floor itself; filtering again keeps the contract explicit.
DETECTION_FLOOR = 0.30

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


@dataclass(frozen=True)
class Detection:
    label: str  # COCO name
    score: float
    box: tuple[float, float, float, float]  # normalized x0, y0, x1, y1


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


class Detector(OnnxModel):
    role = "detector"
    feeds = ("uint8",)
    reads = ("boxes", "scores", "classes", "counts")

    def detect(self, session: Session, frames: Sequence[Frame]) -> list[tuple[Detection, ...]]:
        """Per-frame detections of one batch of frames of one shape."""
        boxes, scores, classes, counts = self.run(session, preprocess_detector(frames))
        return postprocess_detector(boxes, scores, classes, counts)
