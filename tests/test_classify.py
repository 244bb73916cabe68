"""Clip-level aggregation (pure, on constructed per-frame evidence) and the motion
heuristics (pure, on frames of the real evaluation clips)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import ClipError, ErrorCode
from streams.settings import Settings
from streams.stages.classify import HEURISTIC, MODEL_BACKED, aggregate, classify
from streams.stages.decode import decode
from streams.stages.models import Detection, FrameEvidence
from streams.stages.motion import STILL, heuristic_scores, motion_stats
from streams.stages.policy import LABELS, Policy

CLIPS = Path(__file__).resolve().parent.parent / "eval" / "clips"
BOX = (0.1, 0.2, 0.3, 0.6)


def frame(
    *detections: tuple[str, float], spider: float = 0.0, web: float = 0.0, text: float = 0.0
) -> FrameEvidence:
    return FrameEvidence(
        detections=tuple(Detection(label, score, BOX) for label, score in detections),
        imagenet={"spider": spider, "spider_web": web},
        text=text,
    )


def frames_of(clip: str) -> tuple[np.ndarray, ...]:
    return decode(CLIPS / clip, Settings()).frames


def test_a_person_in_one_frame_only_is_not_reported() -> None:
    evidence = [frame(), frame(("person", 0.95)), frame(), frame()]
    result = aggregate(evidence, STILL, Policy())
    assert "person" not in result.labels
    assert result.scores["person"] == 0.0
    assert result.risk == "safe"


def test_a_person_held_over_frames_is_an_intrusion_with_its_best_frame_as_evidence() -> None:
    evidence = [
        frame(("person", 0.7)),
        frame(("person", 0.9), ("car", 0.6), ("chair", 0.8)),
        frame(("person", 0.8)),
    ]
    result = aggregate(evidence, STILL, Policy())
    assert result.scores["person"] == 0.8  # the level held in two frames
    assert result.scores["intrusion"] == 0.8
    assert result.labels[:2] == ["person", "intrusion"]
    assert result.risk == "intrusion"
    assert result.evidence.frame_index == 1
    assert [(b.label, b.detected_as) for b in result.evidence.boxes] == [
        ("person", "person"),
        ("vehicule", "car"),
    ]
    assert result.scores["NOTHING"] == pytest.approx(0.2)


def test_an_uncertain_person_is_danger_and_an_animal_is_danger() -> None:
    uncertain = aggregate([frame(("person", 0.4))] * 3, STILL, Policy())
    assert uncertain.risk == "danger"
    assert "person" not in uncertain.labels
    cat = aggregate([frame(("cat", 0.8))] * 3, STILL, Policy())
    assert cat.labels[0] == "animal"
    assert cat.risk == "danger"


@pytest.mark.parametrize("coco", ["car", "truck", "bus", "motorcycle", "bicycle", "train", "boat"])
def test_vehicle_classes_are_vehicule(coco: str) -> None:
    result = aggregate([frame((coco, 0.9))] * 2, STILL, Policy())
    assert {"vehicule", "intrusion"} <= set(result.labels)


def test_an_airplane_is_not_a_vehicule() -> None:
    result = aggregate([frame(("airplane", 0.9))] * 2, STILL, Policy())
    assert result.scores["vehicule"] == 0.0
    assert result.risk == "safe"


def test_an_empty_still_scene_is_nothing_and_safe() -> None:
    result = aggregate([frame()] * 6, STILL, Policy())
    assert result.labels == ["NOTHING"]
    assert result.scores["NOTHING"] == 1.0
    assert result.evidence.frame_index is None
    assert result.risk == "safe"


def test_spider_web_and_text_come_from_the_model_evidence() -> None:
    evidence = [frame(spider=0.7, web=0.9, text=0.8)] * 3
    result = aggregate(evidence, STILL, Policy())
    assert {"spider", "web", "text"} <= set(result.labels)
    assert result.scores["NOTHING"] == pytest.approx(0.1)  # a web on the lens is something
    assert result.model_backed == MODEL_BACKED
    assert MODEL_BACKED | HEURISTIC == set(LABELS)


def test_a_single_frame_clip_keeps_its_only_score() -> None:
    result = aggregate([frame(("person", 0.9))], STILL, Policy())
    assert result.scores["person"] == 0.9


detections = st.lists(
    st.tuples(st.sampled_from(["person", "car", "dog", "chair", "airplane"]), st.floats(0.3, 1.0)),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(detections, st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
        min_size=1,
        max_size=8,
    )
)
def test_every_label_is_scored_within_0_1_and_labels_follow_the_scores(
    raw: Sequence[tuple[list[tuple[str, float]], float, float, float]],
) -> None:
    evidence = [frame(*d, spider=s, web=w, text=t) for d, s, w, t in raw]
    result = aggregate(evidence, STILL, Policy())
    assert list(result.scores) == list(LABELS)
    assert all(0.0 <= v <= 1.0 for v in result.scores.values())
    assert result.labels == sorted(result.labels, key=lambda lb: -result.scores[lb])
    assert result.scores["intrusion"] == max(result.scores["person"], result.scores["vehicule"])


def test_moving_tree_is_plant_and_wind_not_nothing() -> None:
    stats = motion_stats(frames_of("tree_10s.mp4"))
    result = aggregate([frame()] * 9, stats, Policy())
    assert {"plant", "wind"} <= set(result.labels)
    assert "NOTHING" not in result.labels
    assert result.risk == "safe"


@pytest.mark.parametrize("clip", ["vtest_empty_bottomleft_02s.mp4", "photo_coffee.mp4"])
def test_a_still_scene_and_a_slowly_panning_camera_show_no_motion(clip: str) -> None:
    heuristics = heuristic_scores(motion_stats(frames_of(clip)))
    assert heuristics.activity == 0.0
    assert max(heuristics.plant, heuristics.wind, heuristics.rain, heuristics.flag) == 0.0


def test_walkers_are_motion_but_not_plant() -> None:
    heuristics = heuristic_scores(motion_stats(frames_of("vtest_scene_00s.mp4")))
    assert heuristics.activity > 0.5
    assert heuristics.plant < 0.5


def test_a_failing_model_pack_becomes_an_inference_failure() -> None:
    class BrokenPack:
        def analyse(self, frames: Sequence[np.ndarray]) -> list[FrameEvidence]:
            raise RuntimeError("onnxruntime: bad input")

    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ClipError) as info:
        classify([image, image], [0.0, 0.33], BrokenPack(), Policy())
    assert info.value.code == ErrorCode.INFERENCE_FAILED
