"""Pure helpers of the benchmark: percentiles, summaries, target verdicts and the table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The targets of the benchmark issue (docs/performance.md).
THROUGHPUT_TARGET_RATIO = 0.9  # pipeline clips/s >= 0.9 x the in-process limit
SYNC_OVERHEAD_TARGET_MS = 150.0  # sync API p50 - in-process time of the same clip
# FLAT-MEMORY HEURISTIC: a worker's memory counts as flat when its resident set grows by less
# than this between the end of the warm-up and the end of the run. Allocator noise over a few
# hundred clips is a few MiB; a leak of 100 KB per clip shows up as tens of MiB.
FLAT_MEMORY_TOLERANCE_MIB = 24.0


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile {pct} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * pct / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, p99 and max of a list of samples (NaN when empty)."""
    return {
        "n": len(values),
        "mean": sum(values) / len(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


@dataclass(frozen=True)
class Verdict:
    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def mark(self) -> str:
        return {True: "MET", False: "MISSED", None: "n/a"}[self.met]


def throughput_verdict(pipeline_cps: float, limit_cps: float) -> Verdict:
    value = ratio(pipeline_cps, limit_cps)
    met = None if math.isnan(value) else value >= THROUGHPUT_TARGET_RATIO
    shortfall = "" if met is not False else f" ({THROUGHPUT_TARGET_RATIO - value:.3f} short)"
    return Verdict(
        "pipeline throughput / in-process limit",
        f">= {THROUGHPUT_TARGET_RATIO:.1f}x",
        "-" if met is None else f"{value:.3f}x{shortfall}",
        met,
    )


def sync_verdict(sync_p50_ms: float, inprocess_ms: float) -> Verdict:
    overhead = sync_p50_ms - inprocess_ms
    met = None if math.isnan(overhead) else overhead <= SYNC_OVERHEAD_TARGET_MS
    over = "" if met is not False else f" ({overhead - SYNC_OVERHEAD_TARGET_MS:.0f} ms over)"
    return Verdict(
        "sync API p50 - in-process time (1 client)",
        f"<= {SYNC_OVERHEAD_TARGET_MS:.0f} ms",
        "-" if met is None else f"{overhead:+.0f} ms{over}",
        met,
    )


def memory_verdict(growth_mib: float, clips: int) -> Verdict:
    met = None if math.isnan(growth_mib) else growth_mib < FLAT_MEMORY_TOLERANCE_MIB
    return Verdict(
        "worker RSS growth after warm-up",
        f"flat (< {FLAT_MEMORY_TOLERANCE_MIB:.0f} MiB)",
        "-" if met is None else f"{growth_mib:+.1f} MiB over {clips} clips",
        met,
    )


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 1) -> str:
    """A plain-text table, numbers right-aligned, first column left-aligned."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells for {len(headers)} headers")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        parts = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def latency_row(label: str, summary: Mapping[str, float], extra: Sequence[Any] = ()) -> list[Any]:
    return [label, int(summary["n"]), summary["p50"], summary["p95"], summary["p99"], *extra]
