"""The pack: read models/manifest.json, verify the files, create the sessions, run `analyse`.

Sessions are created once, at `ModelPack.load`, with explicit thread settings; each model's
tensor names come from its manifest entry, checked against the session's graph there.
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
import onnxruntime as ort

from streams.errors import ClipError, ConfigError, ErrorCode
from streams.stages.models.base import (
    ORT_ERRORS,
    Frame,
    OnnxModel,
    Session,
    Signature,
    check_graph,
    read_signature,
)
from streams.stages.models.detector import Detection, Detector
from streams.stages.models.imagenet import ImageNet, read_labels
from streams.stages.models.text import TextDetector, text_frames

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODELS: tuple[type[OnnxModel], ...] = (Detector, ImageNet, TextDetector)
MODEL_ROLES = tuple(model.role for model in MODELS)

# Batch 8 on 2 threads was the sweet spot for a small CNN; larger batches thrashed the cache
# (measured here).
BATCH = 8


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


def check_frames(frames: Sequence[Frame]) -> None:
    for index, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"frame {index}: expected RGB uint8 HxWx3, got {frame.dtype} {frame.shape}"
            )


def batches(frames: Sequence[Frame], size: int = BATCH) -> list[list[Frame]]:
    """Consecutive groups of at most `size` frames that share one shape (stackable)."""
    groups: list[list[Frame]] = []
    for frame in frames:
        if groups and len(groups[-1]) < size and groups[-1][0].shape == frame.shape:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


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


def entry_name(models_dir: Path, manifest: Mapping[str, Any], role: str) -> str:
    """How errors name a model: 'models/manifest.json: detector (ssd_mobilenet_v2_coco.onnx)'."""
    return f"{models_dir / MANIFEST}: {role} ({manifest['models'][role].get('file')})"


def read_signatures(models_dir: Path, manifest: Mapping[str, Any]) -> dict[str, Signature]:
    """Each role's inputs and outputs, checked against what its model code feeds and reads."""
    signatures = {}
    for model in MODELS:
        where = entry_name(models_dir, manifest, model.role)
        signature = read_signature(manifest["models"][model.role], where)
        model.check_manifest(signature, where)
        signatures[model.role] = signature
    return signatures


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
    # Busy-waiting workers doubled the decoder's time next to them (measured here).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The CPU memory arena stays on: turning it off saved ~600 MB of a worker's resident set but
    # cost 17% more CPU per clip (0.96 vs 1.12 CPU s, side by side on 8 eval clips, 3 rounds).
    return options


def providers() -> list[str]:
    available = ort.get_available_providers()
    gpu = [p for p in ("CUDAExecutionProvider", "ROCMExecutionProvider") if p in available]
    return [*gpu, "CPUExecutionProvider"]


class ModelPack:
    """The three models of the pack and their sessions, created once; `analyse` is safe to call
    repeatedly.

    The sessions stay in `_sessions`, role -> session, apart from the models that run them:
    bench/limit.py wraps the entries there to time each model.
    """

    def __init__(
        self,
        name: str,
        version: str,
        sessions: Mapping[str, Session],
        *,
        detector: Detector,
        imagenet: ImageNet,
        text: TextDetector,
    ) -> None:
        self.name = name
        self.version = version
        self._sessions = dict(sessions)
        self.detector = detector
        self.imagenet = imagenet
        self.text = text

    @classmethod
    def load(cls, models_dir: Path, threads: int) -> ModelPack:
        manifest = read_manifest(models_dir)
        signatures = read_signatures(models_dir, manifest)
        options = session_options(threads)
        chosen = providers()
        sessions = {}
        for role in MODEL_ROLES:
            entry = manifest["models"][role]
            path = verified_file(models_dir, entry, role)
            try:
                sessions[role] = ort.InferenceSession(str(path), options, providers=chosen)
            except ORT_ERRORS as exc:
                raise ConfigError(
                    f"model pack: {role} file {path} cannot be loaded: {exc}"
                ) from exc
            check_graph(sessions[role], signatures[role], entry_name(models_dir, manifest, role))
        labels_path = verified_file(
            models_dir, manifest["models"]["imagenet"]["labels"], "imagenet labels"
        )
        labels = read_labels(labels_path)
        log.info(
            "model pack %s %s loaded from %s (providers %s, %d threads)",
            manifest["name"], manifest["version"], models_dir, chosen, threads,
        )  # fmt: skip
        return cls(
            manifest["name"],
            manifest["version"],
            sessions,
            detector=Detector(signatures["detector"]),
            imagenet=ImageNet(signatures["imagenet"], labels),
            text=TextDetector(signatures["text"]),
        )

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
            scores.extend(self.text.score(self._sessions[TextDetector.role], group))
        return scores

    def _analyse_batch(self, frames: Sequence[Frame]) -> list[FrameEvidence]:
        detections = self.detector.detect(self._sessions[Detector.role], frames)
        imagenet = self.imagenet.classify(self._sessions[ImageNet.role], frames)
        return [
            FrameEvidence(
                detections=detections[i],
                imagenet=imagenet[i][0],
                text=None,
                imagenet_top1=imagenet[i][1],
            )
            for i in range(len(frames))
        ]
