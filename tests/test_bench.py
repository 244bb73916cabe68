"""The benchmark's pure helpers: what `make bench` prints must be right even though no test
times anything."""

from __future__ import annotations

import math

import pytest

from bench.run import verdicts_of
from bench.stats import percentile, summarize, sync_verdict, table, throughput_verdict


def test_percentile_interpolates_between_ranks():
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 100) == 40.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_of_nothing_is_nan_and_bad_rank_is_refused():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percentile([1.0], 101)


def test_summary_of_one_sample_is_that_sample():
    summary = summarize([123.0])
    assert (summary["n"], summary["p50"], summary["p99"], summary["max"]) == (1, 123, 123, 123)


def test_throughput_verdict_says_by_how_much_a_target_is_missed():
    assert throughput_verdict(0.95, 1.0).met is True
    missed = throughput_verdict(0.8, 1.0)
    assert missed.met is False
    assert missed.measured == "0.800x (0.100 short)"
    assert throughput_verdict(1.0, math.nan).mark == "n/a"


def test_sync_verdict_compares_with_the_in_process_time():
    assert sync_verdict(1100.0, 1000.0).met is True
    assert sync_verdict(1200.0, 1000.0).measured == "+200 ms (50 ms over)"


def test_table_aligns_columns_and_shows_missing_numbers_as_dashes():
    text = table(["name", "value"], [["a", 1.25], ["longer", math.nan]], digits=2)
    lines = text.splitlines()
    assert lines[0] == "name    value"
    assert lines[2] == "a        1.25"
    assert lines[3] == "longer      -"
    with pytest.raises(ValueError, match="cells"):
        table(["one"], [["a", "b"]])


def test_an_interrupted_run_reports_targets_as_not_measured():
    verdicts = verdicts_of({"limit": {"clips_per_s": 1.0, "reference_ms_p50": 900.0}})
    assert [v.mark for v in verdicts] == ["n/a", "n/a", "n/a"]


def test_memory_growth_is_measured_between_bursts_not_from_the_warm_up():
    report = {
        "memory": [
            {"label": "after warm-up", "clips_done": 8, "rss_mib": 900.0},
            {"label": "after saturation #1", "clips_done": 40, "rss_mib": 1000.0},
            {"label": "end of single-worker phases", "clips_done": 140, "rss_mib": 1010.0},
        ]
    }
    memory = verdicts_of(report)[2]
    assert memory.met is True
    assert memory.measured == "+10.0 MiB over 100 clips"
