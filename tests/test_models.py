"""The model pack on real photos and footage, its manifest checks, and its pure pre/post steps."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from PIL import Image, ImageDraw, ImageFont

from streams.errors import ClipError, ConfigError, ErrorCode
from streams.settings import PROJECT_ROOT
from streams.stages import models as M
from streams.stages.models.base import Signature, TensorSpec, check_graph

IMAGES = Path(__file__).parent / "fixtures" / "images"
MODELS_DIR = PROJECT_ROOT / "models"


def image(name: str) -> np.ndarray:
    return np.asarray(Image.open(IMAGES / f"{name}.jpg").convert("RGB"), dtype=np.uint8)


def with_timestamp(frame: np.ndarray) -> np.ndarray:
    """A camera-style burned-in date and time, white on the frame's top-left corner."""
    picture = Image.fromarray(frame)
    draw = ImageDraw.Draw(picture)
    draw.text((10, 8), "2024-03-17 02:41:09", fill=(255, 255, 255), font=ImageFont.load_default(18))
    return np.asarray(picture)


@pytest.fixture(scope="module")
def pack() -> M.ModelPack:
    return M.ModelPack.load(MODELS_DIR, threads=2)


def labels(evidence: M.FrameEvidence, at_least: float = 0.5) -> set[str]:
    return {d.label for d in evidence.detections if d.score >= at_least}


# ---------------------------------------------------------------- the models on real images


def test_pack_identity_comes_from_the_manifest(pack: M.ModelPack) -> None:
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    assert (pack.name, pack.version) == (manifest["name"], manifest["version"])


def test_detector_finds_the_object_of_each_photo(pack: M.ModelPack) -> None:
    names = ["astronaut", "chelsea", "motorcycle_left"]
    astronaut, chelsea, motorcycle = pack.analyse([image(n) for n in names])
    assert "person" in labels(astronaut)
    assert "cat" in labels(chelsea)
    assert "motorcycle" in labels(motorcycle)


def test_detector_finds_nothing_on_plain_textures_and_foliage(pack: M.ModelPack) -> None:
    for evidence in pack.analyse([image("brick"), image("grass"), image("tree_20")]):
        assert evidence.detections == ()


def test_detector_finds_pedestrians_in_surveillance_footage(pack: M.ModelPack) -> None:
    (frame,) = pack.analyse([image("vtest_240")])
    people = [d for d in frame.detections if d.label == "person" and d.score >= 0.5]
    assert len(people) >= 2
    for detection in people:
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_detections_respect_the_floor_and_come_best_first(pack: M.ModelPack) -> None:
    for evidence in pack.analyse([image("astronaut"), image("vtest_240")]):
        scores = [d.score for d in evidence.detections]
        assert all(s >= M.DETECTION_FLOOR for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_imagenet_sees_a_cat_and_no_spider_in_chelsea(pack: M.ModelPack) -> None:
    (chelsea,) = pack.analyse([image("chelsea")])
    assert chelsea.imagenet_top1 in {"tabby", "tiger cat", "Egyptian cat"}
    assert chelsea.imagenet["top1_prob"] > 0.3
    assert chelsea.imagenet["spider"] < 0.01
    assert chelsea.imagenet["spider_web"] < 0.01


def test_text_score_fires_on_a_burned_in_timestamp_not_on_foliage(pack: M.ModelPack) -> None:
    plain, stamped, tree, grass = pack.analyse(
        [image("vtest_240"), with_timestamp(image("vtest_240")), image("tree_20"), image("grass")]
    )
    assert stamped.text >= 0.6
    assert plain.text < 0.6
    assert tree.text < 0.6
    assert grass.text < 0.6


def test_batched_frames_give_the_same_evidence_as_single_frames(pack: M.ModelPack) -> None:
    frames = [
        image("vtest_240"),
        with_timestamp(image("vtest_240")),
    ] * 5  # 10 frames: a batch of 8 and one of 2
    together = pack.analyse(frames)
    alone = [pack.analyse([f])[0] for f in frames[:2]]
    assert len(together) == 10
    for batched, single in zip(together[:2], alone, strict=True):
        assert [d.label for d in batched.detections] == [d.label for d in single.detections]
        assert np.allclose([d.score for d in batched.detections],
                           [d.score for d in single.detections], atol=1e-4)  # fmt: skip
        assert batched.imagenet["spider"] == pytest.approx(single.imagenet["spider"], abs=1e-4)
    # The text detector sees frames 0, 3, 6 and 9 of ten (M.text_frames), alone or together.
    assert together[0].text == pytest.approx(alone[0].text, abs=1e-4)
    assert [e.text is not None for e in together] == [i in (0, 3, 6, 9) for i in range(10)]
    assert together[3].text is not None and together[3].text > 0.5  # the burned-in timestamp


@pytest.mark.parametrize(
    ("count", "chosen"),
    [(0, []), (1, [0]), (4, [0, 1, 2, 3]), (5, [0, 1, 3, 4]), (12, [0, 4, 7, 11])],
)
def test_the_text_detector_sees_frames_spread_over_the_clip(count: int, chosen: list[int]) -> None:
    assert M.text_frames(count) == chosen


def test_frames_of_different_sizes_are_analysed_separately(pack: M.ModelPack) -> None:
    evidence = pack.analyse([image("chelsea"), image("astronaut")])
    assert "cat" in labels(evidence[0]) and "person" in labels(evidence[1])


def test_a_frame_that_is_not_rgb_uint8_is_an_inference_error(pack: M.ModelPack) -> None:
    with pytest.raises(ClipError) as caught:
        pack.analyse([np.zeros((320, 480), dtype=np.uint8)])
    assert caught.value.code == ErrorCode.INFERENCE_FAILED
    assert "frame 0" in str(caught.value)


class FailingSession:
    def run(self, *args: object) -> None:
        raise ort_state.Fail("simulated kernel failure")


def test_an_onnxruntime_failure_is_an_inference_error(pack: M.ModelPack) -> None:
    sessions = {role: FailingSession() for role in M.MODEL_ROLES}
    broken = M.ModelPack(
        "p", "1", sessions, detector=pack.detector, imagenet=pack.imagenet, text=pack.text
    )
    with pytest.raises(ClipError) as caught:
        broken.analyse([image("chelsea")])
    assert caught.value.code == ErrorCode.INFERENCE_FAILED
    assert "simulated kernel failure" in str(caught.value)


# ---------------------------------------------------------------- manifest checks


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    """A models dir whose files are links to the real ones, and a manifest of its own."""
    shutil.copy(MODELS_DIR / "manifest.json", tmp_path / "manifest.json")
    for path in MODELS_DIR.iterdir():
        if path.suffix in (".onnx", ".txt"):
            (tmp_path / path.name).symlink_to(path)
    return tmp_path


def test_a_file_that_does_not_match_its_checksum_is_refused(pack_copy: Path) -> None:
    labels_file = pack_copy / "imagenet_labels.txt"
    text = labels_file.read_text()
    labels_file.unlink()
    labels_file.write_text(text.replace("tabby", "tabby cat"))
    with pytest.raises(
        ConfigError, match=r"imagenet_labels\.txt has sha256 [0-9a-f]{64}, manifest"
    ):
        M.ModelPack.load(pack_copy, threads=1)


def test_a_model_file_onnxruntime_cannot_read_is_refused(pack_copy: Path) -> None:
    model = pack_copy / "ppocrv4_det.onnx"
    model.unlink()
    model.write_bytes(b"not an onnx model")
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    manifest["models"]["text"]["sha256"] = M.sha256_of(model)
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"text file .*ppocrv4_det\.onnx cannot be loaded"):
        M.ModelPack.load(pack_copy, threads=1)


def test_a_missing_model_file_is_named(pack_copy: Path) -> None:
    (pack_copy / "ppocrv4_det.onnx").unlink()
    with pytest.raises(ConfigError, match=r"text file .*ppocrv4_det\.onnx is missing"):
        M.ModelPack.load(pack_copy, threads=1)


def test_a_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"manifest\.json not found"):
        M.ModelPack.load(tmp_path, threads=1)


def test_a_manifest_without_a_model_role_is_refused(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    del manifest["models"]["text"]
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"lacks .*\['text'\]"):
        M.ModelPack.load(pack_copy, threads=1)


def test_the_models_take_their_tensor_names_from_the_manifest(pack: M.ModelPack) -> None:
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    for role in M.MODEL_ROLES:
        entry = manifest["models"][role]
        model = getattr(pack, role)
        assert model.role == role
        assert model.input_names == [t["name"] for t in entry["inputs"]], role
        assert model.output_names == [t["name"] for t in entry["outputs"]], role
        session = pack._sessions[role]
        assert [i.name for i in session.get_inputs()] == model.input_names, role
        assert [o.name for o in session.get_outputs()] == model.output_names, role


def rewrite_manifest(models_dir: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = models_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest["models"])
    path.write_text(json.dumps(manifest))


def set_at(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def change(models: dict[str, Any]) -> None:
        node: Any = models
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


DETECTOR = r"manifest\.json: detector \(ssd_mobilenet_v2_coco\.onnx\)"
IMAGENET = r"manifest\.json: imagenet \(efficientnet_lite3_int8\.onnx\)"
TEXT = r"manifest\.json: text \(ppocrv4_det\.onnx\)"


def swap_detector_outputs(models: dict[str, Any]) -> None:
    outputs = models["detector"]["outputs"]
    outputs[1], outputs[2] = outputs[2], outputs[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            set_at(("detector", "inputs", 0, "name"), "image:0"),
            DETECTOR + r" input 'image:0': the graph has 'image_tensor:0' instead",
        ),
        (
            set_at(("text", "outputs", 0, "name"), "sigmoid"),
            TEXT + r" output 'sigmoid': the graph has 'sigmoid_0\.tmp_0' instead",
        ),
        (
            swap_detector_outputs,
            DETECTOR + r" output 'detection_classes:0': the graph has 'detection_scores:0' instead",
        ),
        (
            set_at(("imagenet", "inputs", 0, "shape", 1), 300),
            IMAGENET
            + r" input 'images' shape dimension 1: the manifest says 300, the graph has 280",
        ),
        (
            set_at(("imagenet", "outputs", 0, "shape", 1), 1001),
            IMAGENET
            + r" output 'probs' shape dimension 1: the manifest says 1001, the graph has 1000",
        ),
        (
            set_at(("imagenet", "inputs", 0, "shape", 2), "W"),
            IMAGENET + r" input 'images' shape dimension 2: the manifest says 'W' \(any size\), "
            r"the graph fixes it at 280",
        ),
        (
            set_at(("text", "inputs", 0, "shape"), ["N", 3, "H"]),
            TEXT + r" input 'x' shape: the manifest says \[N, 3, H\], the graph has \[",
        ),
        (
            set_at(("text", "outputs", 0, "dtype"), "float16"),
            TEXT + r" output 'sigmoid_0\.tmp_0' dtype: the manifest says float16, the graph has "
            r"float32",
        ),
    ],
    ids=[
        "input-name",
        "output-name",
        "output-order",
        "input-dimension",
        "output-dimension",
        "open-dimension-fixed-by-the-graph",
        "rank",
        "dtype",
    ],
)
def test_a_manifest_that_does_not_match_the_graph_is_refused(
    pack_copy: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    rewrite_manifest(pack_copy, change)
    with pytest.raises(ConfigError, match=message):
        M.ModelPack.load(pack_copy, threads=1)


def test_a_manifest_that_does_not_match_the_code_is_refused(pack_copy: Path) -> None:
    rewrite_manifest(pack_copy, set_at(("imagenet", "inputs", 0, "dtype"), "float32"))
    with pytest.raises(
        ConfigError, match=IMAGENET + r" input 'images' dtype: the manifest says float32, the code"
    ):
        M.ModelPack.load(pack_copy, threads=1)
    rewrite_manifest(pack_copy, set_at(("imagenet", "inputs", 0, "dtype"), "uint8"))
    rewrite_manifest(pack_copy, lambda models: models["detector"]["outputs"].pop())
    with pytest.raises(ConfigError, match=DETECTOR + r" lists 3 outputs, the code reads 4"):
        M.ModelPack.load(pack_copy, threads=1)


@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_a_manifest_entry_without_inputs_or_outputs_names_the_role(
    pack_copy: Path, field: str
) -> None:
    rewrite_manifest(pack_copy, lambda models: models["text"].pop(field))
    with pytest.raises(ConfigError, match=TEXT + f" has no '{field}' list"):
        M.ModelPack.load(pack_copy, threads=1)
    rewrite_manifest(pack_copy, set_at(("text", field), []))
    with pytest.raises(ConfigError, match=TEXT + f" has no '{field}' list"):
        M.ModelPack.load(pack_copy, threads=1)


def test_a_graph_with_more_outputs_than_the_manifest_lists_is_refused() -> None:
    class Node:
        def __init__(self, name: str) -> None:
            self.name, self.type, self.shape = name, "tensor(float)", ["N"]

    class Graph:
        def get_inputs(self) -> list[Node]:
            return [Node("x")]

        def get_outputs(self) -> list[Node]:
            return [Node("a"), Node("b")]

    signature = Signature((TensorSpec("x"),), (TensorSpec("a"),))
    with pytest.raises(
        ConfigError,
        match=r"^m: text \(t\.onnx\) outputs: the manifest lists 1 \('a'\), "
        r"the graph has 2 \('a', 'b'\)$",
    ):
        check_graph(Graph(), signature, "m: text (t.onnx)")


def test_committed_files_match_the_manifest() -> None:
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    for role, entry in manifest["models"].items():
        assert M.sha256_of(MODELS_DIR / entry["file"]) == entry["sha256"], role


# ---------------------------------------------------------------- pure pre/post-processing


def test_detector_input_is_the_raw_frames_stacked() -> None:
    frames = [np.full((320, 568, 3), i, dtype=np.uint8) for i in range(3)]
    batch = M.preprocess_detector(frames)
    assert batch.shape == (3, 320, 568, 3) and batch.dtype == np.uint8
    assert batch[2, 0, 0, 0] == 2


def test_imagenet_input_is_280_square_uint8() -> None:
    batch = M.preprocess_imagenet([np.zeros((320, 568, 3), dtype=np.uint8)] * 2)
    assert batch.shape == (2, 280, 280, 3) and batch.dtype == np.uint8


def test_text_input_is_bgr_nchw_in_minus_one_to_one_with_sides_of_32() -> None:
    red = np.zeros((320, 569, 3), dtype=np.uint8)
    red[..., 0] = 255
    batch = M.preprocess_text([red])
    assert batch.shape == (1, 3, 320, 576) and batch.dtype == np.float32
    assert np.allclose(batch[0, 2], 1.0) and np.allclose(batch[0, 0], -1.0)
    assert np.allclose(batch[0, 1], -1.0)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(320, 569, (320, 576)), (300, 410, (288, 416)), (10, 10, (32, 32))],
)
def test_text_input_sides_are_multiples_of_32(
    height: int, width: int, expected: tuple[int, int]
) -> None:
    assert M.text_input_size(height, width) == expected


def test_postprocess_detector_converts_boxes_names_and_drops_unknown_ids() -> None:
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1], [0, 0, 1, 1]]], dtype=np.float32)
    scores = np.array([[0.9, 0.8, 0.2]], dtype=np.float32)
    classes = np.array([[1.0, 12.0, 3.0]], dtype=np.float32)  # 12 is an unused COCO-91 slot
    (found,) = M.postprocess_detector(boxes, scores, classes, np.array([3.0], dtype=np.float32))
    assert found == (
        M.Detection("person", pytest.approx(0.9), pytest.approx((0.2, 0.1, 0.6, 0.5))),
    )


def test_coco91_table_has_the_80_coco_classes() -> None:
    assert len(M.COCO91) == 80
    assert (M.COCO91[1], M.COCO91[3], M.COCO91[8], M.COCO91[17]) == (
        "person",
        "car",
        "truck",
        "cat",
    )


def test_text_line_score_keeps_line_shaped_regions_only() -> None:
    def score(rows: slice, cols: slice, value: float = 0.9) -> float:
        prob_map = np.zeros((320, 576), dtype=np.float32)
        prob_map[rows, cols] = value
        return M.text_line_score(prob_map)

    assert score(slice(20, 26), slice(10, 40)) == pytest.approx(0.9)  # a 10 px font timestamp
    assert score(slice(20, 36), slice(10, 250)) == pytest.approx(0.9)  # a long caption
    assert score(slice(50, 150), slice(50, 150)) == 0.0  # a blob: leaves, a wall patch
    assert score(slice(20, 28), slice(10, 34)) == 0.0  # an eye-sized region (8x24)
    assert score(slice(20, 24), slice(10, 60)) == 0.0  # too thin: a window frame edge
    assert score(slice(20, 26), slice(10, 40), value=0.45) == 0.0  # above pixel, below region
    speckle = (np.random.default_rng(0).random((320, 576)) > 0.9).astype(np.float32)
    assert M.text_line_score(speckle) == 0.0


def test_batches_group_consecutive_frames_of_one_shape() -> None:
    a = np.zeros((320, 480, 3), dtype=np.uint8)
    b = np.zeros((320, 568, 3), dtype=np.uint8)
    sizes = [len(group) for group in M.batches([a] * 10 + [b] + [a], size=8)]
    assert sizes == [8, 2, 1, 1]


def test_imagenet_evidence_sums_the_spider_classes() -> None:
    probs = np.zeros((1, 1000), dtype=np.float32)
    probs[0, [70, 72, 77]] = 0.2
    probs[0, 71] = 0.1  # scorpion: not a spider
    probs[0, 815] = 0.3
    names = [f"class {i}, synonym" for i in range(1000)]
    ((scores, top1),) = M.imagenet_evidence(probs, names)
    assert scores["spider"] == pytest.approx(0.6)
    assert scores["spider_web"] == pytest.approx(0.3)
    assert top1 == "class 815"
