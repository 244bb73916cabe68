"""Evaluate the classify stage on the labelled clips (what `make eval` runs).

    .venv/bin/python -m eval.run_eval [--models DIR] [--policy FILE] [--out DIR]

Decodes every clip of eval/labels.csv with the real decode stage, classifies it with the real
model pack, prints per-label precision, recall and ROC AUC and the risk confusion matrix, and
writes everything (per-clip scores included) to .clipguard/eval/report.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python eval/run_eval.py` as well as `python -m eval.run_eval`
    sys.path.insert(0, str(ROOT))

from streams.settings import Settings  # noqa: E402
from streams.stages.classify import MODEL_BACKED, ClipScores, classify  # noqa: E402
from streams.stages.decode import decode  # noqa: E402
from streams.stages.policy import LABELS, RISKS, Policy, load_policies  # noqa: E402

EVAL_DIR = ROOT / "eval"
LABELS_CSV = EVAL_DIR / "labels.csv"
CLIPS_DIR = EVAL_DIR / "clips"
OUT_DIR = ROOT / ".clipguard" / "eval"


@dataclass(frozen=True)
class LabelledClip:
    clip: str
    labels: frozenset[str]
    risk: str
    source: str


@dataclass(frozen=True)
class ClipResult:
    truth: LabelledClip
    result: ClipScores


@dataclass(frozen=True)
class LabelMetrics:
    label: str
    positives: int
    negatives: int
    precision: float | None  # None: nothing predicted
    recall: float | None  # None: no positive clip
    auc: float | None  # None: no positive or no negative clip


def load_labels(path: Path = LABELS_CSV) -> list[LabelledClip]:
    clips = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            labels = frozenset(filter(None, row["labels"].split(";")))
            unknown = labels - set(LABELS)
            if unknown or row["risk"] not in RISKS:
                raise ValueError(f"{path}: clip {row['clip']}: bad labels {unknown} or risk")
            clips.append(LabelledClip(row["clip"], labels, row["risk"], row["source"]))
    return clips


def run(
    clips: Sequence[LabelledClip],
    pack: Any,
    policy: Policy,
    settings: Settings,
    clips_dir: Path = CLIPS_DIR,
) -> list[ClipResult]:
    results = []
    for clip in clips:
        decoded = decode(clips_dir / clip.clip, settings)
        scores = classify(decoded.frames, decoded.timestamps, pack, policy)
        results.append(ClipResult(clip, scores))
    return results


def roc_auc(scores: Sequence[float], truth: Sequence[bool]) -> float | None:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    s = np.asarray(scores, float)
    t = np.asarray(truth, bool)
    pos, neg = s[t], s[~t]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def label_metrics(results: Sequence[ClipResult]) -> list[LabelMetrics]:
    out = []
    for label in LABELS:
        truth = [label in r.truth.labels for r in results]
        predicted = [label in r.result.labels for r in results]
        scores = [r.result.scores[label] for r in results]
        tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
        n_pred, n_pos = sum(predicted), sum(truth)
        out.append(
            LabelMetrics(
                label=label,
                positives=n_pos,
                negatives=len(truth) - n_pos,
                precision=tp / n_pred if n_pred else None,
                recall=tp / n_pos if n_pos else None,
                auc=roc_auc(scores, truth),
            )
        )
    return out


def risk_confusion(results: Sequence[ClipResult]) -> dict[str, dict[str, int]]:
    """confusion[expected][predicted] = clip count."""
    matrix = {expected: dict.fromkeys(RISKS, 0) for expected in RISKS}
    for r in results:
        matrix[r.truth.risk][r.result.risk] += 1
    return matrix


def risk_accuracy(results: Sequence[ClipResult]) -> float:
    return sum(r.truth.risk == r.result.risk for r in results) / len(results)


def empty_scene_false_positive_rate(results: Sequence[ClipResult]) -> float:
    """Share of clips with no person, vehicule or animal that still get one of those labels."""
    objects = {"person", "vehicule", "animal"}
    empty = [r for r in results if not (r.truth.labels & objects)]
    flagged = [r for r in empty if set(r.result.labels) & objects]
    return len(flagged) / len(empty) if empty else 0.0


def report(results: Sequence[ClipResult]) -> dict[str, Any]:
    return {
        "clips": [
            {
                "clip": r.truth.clip,
                "source": r.truth.source,
                "true_labels": sorted(r.truth.labels),
                "expected_risk": r.truth.risk,
                "labels": r.result.labels,
                "risk": r.result.risk,
                "scores": r.result.scores,
                "evidence_frame": r.result.evidence.frame_index,
            }
            for r in results
        ],
        "labels": [m.__dict__ for m in label_metrics(results)],
        "risk_confusion": risk_confusion(results),
        "risk_accuracy": risk_accuracy(results),
        "empty_scene_false_positive_rate": empty_scene_false_positive_rate(results),
    }


def format_report(rep: dict[str, Any], model: str) -> str:
    def num(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.2f}"

    lines = [f"model pack: {model}; {len(rep['clips'])} clips", ""]
    lines.append(
        f"{'label':10s} {'pos':>4s} {'neg':>4s} {'prec':>6s} {'recall':>6s} {'AUC':>6s}  kind"
    )
    for m in rep["labels"]:
        kind = "model" if m["label"] in MODEL_BACKED else "heuristic"
        lines.append(
            f"{m['label']:10s} {m['positives']:4d} {m['negatives']:4d} "
            f"{num(m['precision'])} {num(m['recall'])} {num(m['auc'])}  {kind}"
        )
    lines += ["", "risk confusion (rows: expected, columns: predicted)"]
    lines.append(" " * 10 + "".join(f"{r:>10s}" for r in RISKS))
    for expected in RISKS:
        row = rep["risk_confusion"][expected]
        lines.append(f"{expected:10s}" + "".join(f"{row[p]:10d}" for p in RISKS))
    lines.append(f"risk accuracy: {rep['risk_accuracy']:.2f}")
    lines.append(f"empty-scene false-positive rate: {rep['empty_scene_false_positive_rate']:.2f}")
    lines += ["", "misses and false alarms:"]
    for c in rep["clips"]:
        missed = sorted(set(c["true_labels"]) - set(c["labels"]))
        extra = sorted(set(c["labels"]) - set(c["true_labels"]))
        if missed or extra or c["risk"] != c["expected_risk"]:
            lines.append(
                f"  {c['clip']}: missed {missed} extra {extra} "
                f"risk {c['risk']} (expected {c['expected_risk']})"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="model pack folder")
    parser.add_argument("--policy", type=Path, default=None, help="policy JSON file")
    parser.add_argument("--tenant", default=None, help="tenant whose policy to use")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    from streams.stages.models import ModelPack

    settings = Settings.from_env()
    models_dir = args.models or settings.models_dir
    pack = ModelPack.load(models_dir, settings.inference_threads)
    policy = load_policies(args.policy or settings.policy_file).for_tenant(args.tenant)
    results = run(load_labels(), pack, policy, settings)
    rep = report(results)
    rep["model"] = {"name": pack.name, "version": pack.version}
    print(format_report(rep, f"{pack.name} {pack.version}"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(f"\nwritten: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
