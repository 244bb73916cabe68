"""Clip-level scores for the 13 labels, from per-frame model evidence and motion statistics.

`classify(frames, timestamps, pack, policy)` runs the model pack on the sampled frames and
the motion heuristics, then `aggregate` (pure, no model) turns both into a `ClipScores`.

Model-backed labels (MODEL_BACKED) come from the model pack's outputs:
- `person`, `vehicule`, `animal`: the COCO detector's box scores (VEHICLE_CLASSES and
  ANIMAL_CLASSES say which COCO classes count);
- `intrusion`: the larger of `person` and `vehicule` (it follows them);
- `spider`, `web`: the ImageNet classifier's spider and spider-web probabilities;
- `text`: the text detector's text-presence score.
Each frame gives its best score for the label; the clip score is the SECOND best frame score
(TEMPORAL RULE): a hit must hold in at least two sampled frames, so a one-frame false
detection cannot raise a clip above the weaker of its two best frames. A one-frame clip has
no second frame and keeps its only score.

Heuristic labels (HEURISTIC) come from streams.stages.motion: `plant`, `flag`, `rain`,
`wind` directly; `other` = meaningful motion that no other label explains; `NOTHING` = no
object (person, vehicule, animal, spider, web) and no meaningful motion. These are named
heuristics, not fitted probabilities (docs/classify.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streams.errors import ClipError, ClipGuardError, ErrorCode
from streams.stages.motion import MotionStats, heuristic_scores, motion_stats
from streams.stages.policy import LABELS, Policy

log = logging.getLogger(__name__)

# Airplanes are left out: a camera that sees sky sees planes overhead (and the detector
# confuses far birds with them), neither of which is an intrusion. Boats and trains are in:
# marinas, yards and level crossings watch for exactly those.
VEHICLE_CLASSES = frozenset({"bicycle", "car", "motorcycle", "bus", "train", "truck", "boat"})
ANIMAL_CLASSES = frozenset(
    {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"}
)
OBJECT_LABELS = ("person", "vehicule", "animal")
MODEL_BACKED = frozenset({"person", "vehicule", "animal", "intrusion", "text", "web", "spider"})
HEURISTIC = frozenset(LABELS) - MODEL_BACKED
SCORE_DECIMALS = 3


class _Detection(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def box(self) -> tuple[float, float, float, float]: ...


class _FrameEvidence(Protocol):
    @property
    def detections(self) -> Sequence[_Detection]: ...
    @property
    def imagenet(self) -> Mapping[str, float]: ...
    @property
    def text(self) -> float | None: ...


class _ModelPack(Protocol):
    def analyse(self, frames: Sequence[np.ndarray]) -> Sequence[_FrameEvidence]: ...


@dataclass(frozen=True)
class EvidenceBox:
    label: str  # person, vehicule or animal
    detected_as: str  # the COCO class behind it
    score: float
    box: tuple[float, float, float, float]  # normalized x0, y0, x1, y1


@dataclass(frozen=True)
class Evidence:
    """The best frame for the top object label, and its person/vehicule/animal boxes."""

    frame_index: int | None = None  # into the sampled frames; None: no object detected
    timestamp: float | None = None  # seconds from the clip's start (filled by classify)
    boxes: tuple[EvidenceBox, ...] = ()


@dataclass(frozen=True)
class ClipScores:
    scores: dict[str, float]  # all 13 labels, 0..1, in LABELS order
    labels: list[str]  # at or above the policy's thresholds, highest score first
    risk: str  # safe, danger or intrusion
    evidence: Evidence = field(default_factory=Evidence)
    model_backed: frozenset[str] = MODEL_BACKED


def classify(
    frames: Sequence[np.ndarray],
    timestamps: Sequence[float],
    pack: _ModelPack,
    policy: Policy,
) -> ClipScores:
    """Scores for one clip's sampled RGB frames; model failures become INFERENCE_FAILED."""
    if not frames:
        raise ClipError(ErrorCode.NO_FRAMES, "no frames to classify")
    try:
        evidence = list(pack.analyse(frames))
    except ClipGuardError:
        raise
    except Exception as exc:
        # onnxruntime raises several unrelated exception types (Fail, InvalidArgument,
        # RuntimeException...) with no common base class of its own to catch.
        raise ClipError(ErrorCode.INFERENCE_FAILED, f"model pack failed: {exc}") from exc
    if len(evidence) != len(frames):
        raise ClipError(
            ErrorCode.INFERENCE_FAILED,
            f"model pack returned {len(evidence)} results for {len(frames)} frames",
        )
    result = aggregate(evidence, motion_stats(frames), policy)
    index = result.evidence.frame_index
    if index is not None and index < len(timestamps):
        stamped = Evidence(index, float(timestamps[index]), result.evidence.boxes)
        result = ClipScores(result.scores, result.labels, result.risk, stamped, result.model_backed)
    return result


def aggregate(
    evidence: Sequence[_FrameEvidence], motion: MotionStats, policy: Policy
) -> ClipScores:
    """Pure: per-frame evidence and motion statistics in, clip scores out (module docstring)."""
    if not evidence:
        raise ClipError(ErrorCode.NO_FRAMES, "no frames to aggregate")
    per_frame: dict[str, list[float]] = {label: [] for label in OBJECT_LABELS}
    per_frame |= {"spider": [], "web": [], "text": []}
    for frame in evidence:
        best = _best_per_object_label(frame.detections)
        for label in OBJECT_LABELS:
            per_frame[label].append(best[label])
        per_frame["spider"].append(float(frame.imagenet.get("spider", 0.0)))
        per_frame["web"].append(float(frame.imagenet.get("spider_web", 0.0)))
        if frame.text is not None:  # the text detector sees only some frames (models/text.py)
            per_frame["text"].append(float(frame.text))

    scores = {label: held_score(values) for label, values in per_frame.items()}
    scores["intrusion"] = max(scores["person"], scores["vehicule"])

    heuristics = heuristic_scores(motion)
    scores |= {
        "plant": heuristics.plant,
        "flag": heuristics.flag,
        "rain": heuristics.rain,
        "wind": heuristics.wind,
    }
    explained = max(
        scores[label] for label in ("person", "vehicule", "animal", "plant", "flag", "rain", "wind")
    )
    scores["other"] = heuristics.activity * (1.0 - explained)
    objects = max(scores[label] for label in ("person", "vehicule", "animal", "spider", "web"))
    scores["NOTHING"] = (1.0 - objects) * (1.0 - heuristics.activity)

    rounded = {
        label: round(float(np.clip(scores[label], 0.0, 1.0)), SCORE_DECIMALS) for label in LABELS
    }
    return ClipScores(
        scores=rounded,
        labels=policy.labels(rounded),
        risk=policy.risk(rounded),
        evidence=_evidence(evidence, per_frame, rounded),
    )


def held_score(values: Sequence[float]) -> float:
    """TEMPORAL RULE: the level reached in at least two frames (the only one if just one)."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    top_two = sorted(values, reverse=True)[:2]
    return float(top_two[1])


def object_label(coco_label: str) -> str | None:
    if coco_label == "person":
        return "person"
    if coco_label in VEHICLE_CLASSES:
        return "vehicule"
    if coco_label in ANIMAL_CLASSES:
        return "animal"
    return None


def _best_per_object_label(detections: Sequence[_Detection]) -> dict[str, float]:
    best = dict.fromkeys(OBJECT_LABELS, 0.0)
    for detection in detections:
        label = object_label(detection.label)
        if label is not None:
            best[label] = max(best[label], float(detection.score))
    return best


def _evidence(
    evidence: Sequence[_FrameEvidence],
    per_frame: Mapping[str, list[float]],
    scores: Mapping[str, float],
) -> Evidence:
    top = max(OBJECT_LABELS, key=lambda label: (scores[label], -OBJECT_LABELS.index(label)))
    if scores[top] <= 0.0:
        return Evidence()
    # The frame where the clip's top object label scores highest: the clearest view of it.
    index = int(np.argmax(per_frame[top]))
    boxes = []
    for detection in evidence[index].detections:
        label = object_label(detection.label)
        if label is not None:
            boxes.append(
                EvidenceBox(
                    label,
                    detection.label,
                    round(float(detection.score), SCORE_DECIMALS),
                    tuple(round(float(v), 4) for v in detection.box),  # type: ignore[arg-type]
                )
            )
    boxes.sort(key=lambda box: -box.score)
    return Evidence(frame_index=index, boxes=tuple(boxes))
