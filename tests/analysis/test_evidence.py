"""Confidence intervals, CoV and point aggregation on hand-made data with known answers."""

import math

import pytest

from kvharness.analysis.evidence import aggregate
from kvharness.stats import cov, mean_ci, t95


def test_mean_ci_matches_the_t_formula():
    s = mean_ci([10.0, 12.0, 14.0])
    assert s["mean"] == 12.0 and s["n"] == 3
    assert s["sd"] == pytest.approx(2.0)
    half = 4.303 * 2.0 / math.sqrt(3)
    assert s["ci_low"] == pytest.approx(12.0 - half) and s["ci_high"] == pytest.approx(12.0 + half)


def test_one_value_has_no_interval_and_missing_values_are_skipped():
    assert mean_ci([5.0, None])["ci_low"] is None
    assert mean_ci([])["mean"] is None
    assert t95(1000) == 1.96


def test_cov():
    assert cov([9.0, 10.0, 11.0]) == pytest.approx(0.1)
    assert cov([3.0]) is None


def test_aggregate_groups_reps_of_a_point():
    rows = [{"stack": "B", "bio": b, "rep": r, "ttft_ms_p99": v}
            for b, vals in (("off", [100.0, 102.0, 98.0]), ("on", [200.0, 210.0, 190.0]))
            for r, v in enumerate(vals)]
    agg = {a["bio"]: a for a in aggregate(rows, ["stack", "bio"], ["ttft_ms_p99"])}
    assert agg["off"]["n_reps"] == 3 and agg["off"]["ttft_ms_p99_mean"] == pytest.approx(100.0)
    assert agg["on"]["ttft_p99_cov"] == pytest.approx(10.0 / 200.0)
