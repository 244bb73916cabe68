"""The ONNX model pack: load it once, run it on a clip's frames, return per-frame evidence.

Three models, all built from weights that ship inside registry packages (see
models/manifest.json and docs/models.md), one module each behind one interface
(`base.OnnxModel`: a manifest role, the dtypes it feeds, the outputs it reads):

- `detector` (detector.py): SSD-MobileNetV2 trained on COCO. Resize and NMS run inside the
  graph; it never reports a score below 0.30, so that is the floor of what we return.
- `imagenet` (imagenet.py): EfficientNet-Lite3 (int8) ImageNet-1k classifier; we use its
  spider and spider web classes.
- `text` (text.py): PP-OCRv4 text detector (a DB probability map), turned into a 0..1 score by
  `text_line_score`, a heuristic line-shape filter.

pack.py reads the manifest, verifies each file's sha256, creates the sessions and checks their
graphs against the manifest's inputs and outputs, whose names the models then use.

No Faust here: `ModelPack.analyse(frames)` is a plain call. Sessions are created once, at
`ModelPack.load`, with explicit thread settings. Pre- and post-processing are pure numpy
functions so tests can check them without a model.
"""

from streams.stages.models.base import ORT_ERRORS, Frame, resize_rgb
from streams.stages.models.detector import (
    COCO91,
    DETECTION_FLOOR,
    Detection,
    postprocess_detector,
    preprocess_detector,
)
from streams.stages.models.imagenet import imagenet_evidence, preprocess_imagenet
from streams.stages.models.pack import (
    MODEL_ROLES,
    FrameEvidence,
    ModelPack,
    batches,
    session_options,
    sha256_of,
)
from streams.stages.models.text import (
    preprocess_text,
    text_frames,
    text_input_size,
    text_line_score,
)

__all__ = [
    "COCO91",
    "DETECTION_FLOOR",
    "MODEL_ROLES",
    "ORT_ERRORS",
    "Detection",
    "Frame",
    "FrameEvidence",
    "ModelPack",
    "batches",
    "imagenet_evidence",
    "postprocess_detector",
    "preprocess_detector",
    "preprocess_imagenet",
    "preprocess_text",
    "resize_rgb",
    "session_options",
    "sha256_of",
    "text_frames",
    "text_input_size",
    "text_line_score",
]
