"""What every model of the pack shares: frame types, the session interface, the manifest check.

A model module (detector.py, imagenet.py, text.py) is one plugin behind `OnnxModel`: it names
its manifest role, the dtype of each input it feeds and what it takes each output for, and
runs its role's session with the tensor names the manifest gives. `Signature` is the
manifest's `inputs`/`outputs` of one model; `check_graph` holds it against the session's graph
when the pack loads, so a rebuilt or swapped file that no longer fits is a ConfigError then,
not a failure on every clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from PIL import Image

from streams.errors import ConfigError

Frame = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
Dim = int | str  # a fixed size, or a name ("N", "H", "W") for a size the graph leaves open

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

# onnxruntime's element type names that differ from numpy's.
ORT_DTYPES = {"float": "float32", "double": "float64"}


def resize_rgb(frame: Frame, width: int, height: int) -> Frame:
    if frame.shape[:2] == (height, width):
        return frame
    resized = Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


class Session(Protocol):
    """The part of `onnxruntime.InferenceSession` a model uses to run."""

    def run(self, output_names: Sequence[str], input_feed: Mapping[str, Any], /) -> Any: ...


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a model's `inputs` or `outputs` in models/manifest.json."""

    name: str
    dtype: str | None = None  # numpy's name (uint8, float32); None when the manifest gives none
    shape: tuple[Dim, ...] | None = None


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs as the manifest lists them, in the graph's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def read_signature(entry: Mapping[str, Any], where: str) -> Signature:
    """The `inputs` and `outputs` of one manifest entry; `where` names it in errors."""
    return Signature(_tensors(entry, "inputs", where), _tensors(entry, "outputs", where))


def _tensors(entry: Mapping[str, Any], field: str, where: str) -> tuple[TensorSpec, ...]:
    listed = entry.get(field)
    if not isinstance(listed, list) or not listed:
        raise ConfigError(
            f"{where} has no '{field}' list: the manifest gives every model's {field} "
            "(name, dtype, shape), and the pack takes the tensor names from there"
        )
    return tuple(_tensor(item, f"{field[:-1]} {index}", where) for index, item in enumerate(listed))


def _tensor(item: object, what: str, where: str) -> TensorSpec:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise ConfigError(f"{where} {what}: expected an object with a 'name', got {item!r}")
    name: str = item["name"]
    dtype = item.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise ConfigError(f"{where} {what} '{name}' dtype: expected a string, got {dtype!r}")
    shape = item.get("shape")
    if shape is not None and not (
        isinstance(shape, list)
        and all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape)
    ):
        raise ConfigError(
            f"{where} {what} '{name}' shape: expected a list of sizes and names, got {shape!r}"
        )
    return TensorSpec(name, dtype, None if shape is None else tuple(shape))


def check_graph(session: Any, signature: Signature, where: str) -> None:
    """Raise ConfigError unless the session's graph has the manifest's inputs and outputs.

    Names and their order, dtypes where the manifest gives them, and shapes: the same rank,
    each size the manifest fixes fixed to it or left open by the graph (the detector's graph
    leaves its 100 rows open), each size the manifest names (N, H, W) left open by the graph.
    """
    for kind, listed, graph in (
        ("input", signature.inputs, session.get_inputs()),
        ("output", signature.outputs, session.get_outputs()),
    ):
        if len(listed) != len(graph):
            raise ConfigError(
                f"{where} {kind}s: the manifest lists {_names(t.name for t in listed)}, "
                f"the graph has {_names(node.name for node in graph)}"
            )
        for spec, node in zip(listed, graph, strict=True):
            _check_tensor(spec, node.name, node.type, node.shape, f"{where} {kind} '{spec.name}'")


def _check_tensor(
    spec: TensorSpec, name: str, ort_type: str, shape: Sequence[Any], at: str
) -> None:
    if name != spec.name:
        raise ConfigError(f"{at}: the graph has '{name}' instead")
    dtype = graph_dtype(ort_type)
    if spec.dtype is not None and dtype != spec.dtype:
        raise ConfigError(f"{at} dtype: the manifest says {spec.dtype}, the graph has {dtype}")
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise ConfigError(
            f"{at} shape: the manifest says {_shape(spec.shape)}, the graph has {_shape(shape)}"
        )
    for index, (want, have) in enumerate(zip(spec.shape, shape, strict=True)):
        fixed = isinstance(have, int)
        if isinstance(want, int) and fixed and have != want:
            raise ConfigError(
                f"{at} shape dimension {index}: the manifest says {want}, the graph has {have}"
            )
        if isinstance(want, str) and fixed:
            raise ConfigError(
                f"{at} shape dimension {index}: the manifest says '{want}' (any size), "
                f"the graph fixes it at {have}"
            )


def graph_dtype(ort_type: str) -> str:
    """'tensor(float)' -> 'float32', 'tensor(uint8)' -> 'uint8' (numpy's names)."""
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return ORT_DTYPES.get(inner, inner)


def _names(names: Iterable[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return f"{len(quoted)} ({', '.join(quoted)})"


def _shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class OnnxModel:
    """One model of the pack: its manifest role, bound to the manifest's tensor names.

    A subclass names its `role`, the dtype of each input it `feeds` and what it takes each
    output for (`reads`), both in the manifest's order; `run` feeds its arrays to the role's
    session by the manifest's input names and returns the outputs in the manifest's order.
    """

    role: ClassVar[str]
    feeds: ClassVar[tuple[str, ...]]
    reads: ClassVar[tuple[str, ...]]

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.input_names = list(signature.input_names)
        self.output_names = list(signature.output_names)

    @classmethod
    def check_manifest(cls, signature: Signature, where: str) -> None:
        """Raise ConfigError unless the manifest lists what this code feeds and reads."""
        if len(signature.inputs) != len(cls.feeds):
            raise ConfigError(
                f"{where} lists {_count(len(signature.inputs), 'input')}, "
                f"the code feeds {len(cls.feeds)}"
            )
        for spec, dtype in zip(signature.inputs, cls.feeds, strict=True):
            if spec.dtype is not None and spec.dtype != dtype:
                raise ConfigError(
                    f"{where} input '{spec.name}' dtype: the manifest says {spec.dtype}, "
                    f"the code feeds {dtype}"
                )
        if len(signature.outputs) != len(cls.reads):
            raise ConfigError(
                f"{where} lists {_count(len(signature.outputs), 'output')}, the code reads "
                f"{len(cls.reads)} ({', '.join(cls.reads)})"
            )

    def run(self, session: Session, *arrays: npt.NDArray[Any]) -> list[Any]:
        feed = dict(zip(self.input_names, arrays, strict=True))
        return list(session.run(self.output_names, feed))
