"""`imagenet`: EfficientNet-Lite3 (int8) ImageNet-1k classifier; we use its spider and spider
web classes (`FrameEvidence.imagenet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streams.errors import ConfigError
from streams.stages.models.base import (
    FloatArray,
    Frame,
    OnnxModel,
    Session,
    Signature,
    resize_rgb,
)

IMAGENET_SIZE = 280
IMAGENET_CLASSES = 1000
# ImageNet-1k indices: 70 harvestman, 72-77 the true spiders (71 is the scorpion), 815 spider web.
IMAGENET_SPIDER = (70, 72, 73, 74, 75, 76, 77)
IMAGENET_SPIDER_WEB = (815,)


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


def read_labels(path: Path) -> list[str]:
    """The class names, one a line, in the order of the model's output."""
    labels = path.read_text().splitlines()
    if len(labels) != IMAGENET_CLASSES:
        raise ConfigError(
            f"model pack: {path} has {len(labels)} labels, expected {IMAGENET_CLASSES}"
        )
    return labels


class ImageNet(OnnxModel):
    role = "imagenet"
    feeds = ("uint8",)
    reads = ("probabilities",)

    def __init__(self, signature: Signature, labels: Sequence[str]) -> None:
        super().__init__(signature)
        self.labels = list(labels)

    def classify(
        self, session: Session, frames: Sequence[Frame]
    ) -> list[tuple[dict[str, float], str]]:
        """Per frame of one batch: the spider scores and the top-1 class name."""
        (probs,) = self.run(session, preprocess_imagenet(frames))
        return imagenet_evidence(probs, self.labels)
