"""Manifest chores for build.sh: stamp checksums, verify files, compare a rebuild.

    python pack.py stamp MODELS_DIR          # write sha256/bytes of every file into manifest.json
    python pack.py verify MODELS_DIR         # every file matches its manifest sha256
    python pack.py compare MODELS_DIR OTHER  # OTHER's models give the same outputs as MODELS_DIR's

tf2onnx names nodes with counters that differ from run to run, so a rebuild is not
byte-identical; `compare` checks that it computes the same thing instead.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries(manifest: dict) -> list[dict]:
    found = []
    for model in manifest["models"].values():
        found.append(model)
        if "labels" in model:
            found.append(model["labels"])
    return found


def stamp(models_dir: Path) -> int:
    path = models_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in entries(manifest):
        file = models_dir / entry["file"]
        entry["sha256"] = sha256_of(file)
        entry["bytes"] = file.stat().st_size
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return 0


def verify(models_dir: Path) -> int:
    manifest = json.loads((models_dir / "manifest.json").read_text())
    bad = 0
    for entry in entries(manifest):
        file = models_dir / entry["file"]
        actual = sha256_of(file) if file.is_file() else "missing"
        ok = actual == entry["sha256"]
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {entry['file']} {actual}")
    return 1 if bad else 0


def compare(models_dir: Path, other: Path) -> int:
    import onnxruntime as ort

    manifest = json.loads((models_dir / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 320, 576, 3), dtype=np.uint8)
    # A smooth image too: random noise alone leaves the detector with nothing to find.
    ramp = np.linspace(0, 255, 576, dtype=np.float32)[None, :, None]
    frames[1] = np.broadcast_to(ramp, (320, 576, 3)).astype(np.uint8)
    feeds = {
        "detector": {"image_tensor:0": frames},
        "imagenet": {"images": frames[:, :280, :280]},
        "text": {"x": (frames[..., ::-1].transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)},
    }
    worst = 0
    for role, entry in manifest["models"].items():
        outs = []
        for root in (models_dir, other):
            session = ort.InferenceSession(
                str(root / entry["file"]), providers=["CPUExecutionProvider"]
            )
            outs.append(session.run(None, feeds[role]))
        delta = max(
            float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(*outs, strict=True)
        )
        same = delta <= 1e-4
        worst += not same
        print(f"{'same' if same else 'DIFFERENT'} {role}: max output delta {delta:.2e}")
    return 1 if worst else 0


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    handlers = {"stamp": stamp, "verify": verify, "compare": compare}
    sys.exit(handlers[command](*map(Path, paths)))
