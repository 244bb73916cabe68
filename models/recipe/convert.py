"""Post-conversion steps of the model pack recipe (run by build.sh in the build venv).

Each step takes an ONNX file that a converter (or the source package) produced and writes
the file that ships in models/. Steps are deterministic so that a rebuild reproduces the
committed bytes (checked by `build.sh --check`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Initializers smaller than this stay float32: fp16 storage only pays off on conv weights,
# and small tensors (biases, anchors, NMS constants) are where rounding could bite.
FP16_MIN_ELEMENTS = 1024


def fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store big float32 weights as float16 followed by a Cast back to float32.

    Compute stays float32 (onnxruntime folds the Casts once at session start-up), so
    outputs move only by the weight rounding, while the file halves. A full fp16 graph
    (onnxconverter-common) would also halve it but runs slower on CPU, where most fp16
    kernels are missing and get wrapped in casts at every call.
    """
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < FP16_MIN_ELEMENTS:
            continue
        name = init.name
        half_name = name + "__fp16"
        init.CopyFrom(numpy_helper.from_array(array.astype(np.float16), half_name))
        casts.append(
            helper.make_node(
                "Cast", [half_name], [name], to=TensorProto.FLOAT, name=name + "__cast"
            )
        )
    # Casts first: a topological order is required and they depend only on initializers.
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


def int8_weight_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store big Conv weights as int8 (symmetric, one scale per output channel) followed by
    a DequantizeLinear back to float32. Compute stays float32; only storage shrinks (4x).
    """
    graph = model.graph
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    dequant = []
    for init in graph.initializer:
        if init.name not in conv_weights or init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < FP16_MIN_ELEMENTS:
            continue
        name = init.name
        peak = np.abs(array.reshape(array.shape[0], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shape = (-1,) + (1,) * (array.ndim - 1)
        quantized = np.clip(np.round(array / scale.reshape(shape)), -127, 127).astype(np.int8)
        init.CopyFrom(numpy_helper.from_array(quantized, name + "__int8"))
        graph.initializer.append(numpy_helper.from_array(scale, name + "__scale"))
        graph.initializer.append(
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "__zero")
        )
        dequant.append(
            helper.make_node(
                "DequantizeLinear",
                [name + "__int8", name + "__scale", name + "__zero"],
                [name],
                axis=0,
                name=name + "__dequant",
            )
        )
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequant + nodes)
    return model


def effnet_float_output_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the tflite-converted EfficientNet-Lite3 batchable and give float probabilities.

    tf2onnx keeps the tflite's batch of 1 and its uint8-quantized softmax output (steps of
    1/256). We expose the float softmax before its final quantize step, and let the batch
    dimension vary (the only shape-bound op is the Reshape before the classifier).
    """
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs"
    # Drop everything after the Softmax (Q/DQ/Q chain that only re-quantizes the output).
    keep = []
    for node in graph.node:
        keep.append(node)
        if node is softmax:
            break
    del graph.node[:]
    graph.node.extend(keep)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 1000]))
    graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_value")
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape[0] == 1:
                shape[0] = -1
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    del graph.value_info[:]
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


STEPS = {
    "fp16-storage": fp16_storage,
    "effnet-fixup": effnet_float_output_dynamic_batch,
    "int8-weights": int8_weight_storage,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    model = STEPS[args.step](onnx.load(str(args.source)))
    onnx.checker.check_model(model)
    onnx.save(model, str(args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
