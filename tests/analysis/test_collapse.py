"""Generalised collapse point and storage knee on hand-made tables with known answers."""

import pytest

from kvharness.analysis.knee import (
    collapse_point,
    growth_factors,
    step_causes,
    storage_knee,
    unbounded_growth,
)
from kvharness.analysis.spill import envelope, weighted_percentile


def ctx_steps(p99s, contexts=(1024, 2048, 4096, 8192), **extra):
    return [{"context_tokens": c, "ttft_ms_p99": p, "n_errors": 0, "prompt_tok_s": 1000.0, **extra}
            for c, p in zip(contexts, p99s)]


# ------------------------------------------------------------------------------------- collapse point

def test_proportional_growth_is_not_unbounded():
    # p99 doubling when the context doubles: the system keeps up (growth factor 1 at every step).
    steps = ctx_steps([100, 200, 400, 800])
    assert growth_factors(steps, "context_tokens")[1:] == [1.0, 1.0, 1.0]
    assert collapse_point(steps, axis="context_tokens", throughput_key="prompt_tok_s")["collapse_at"] is None


def test_unbounded_growth_collapses_at_the_first_step_of_the_run():
    # 1024 -> 2048 proportional, then p99 grows 4x and 4x per doubling (factor 2 > 1.5, twice).
    steps = ctx_steps([50, 100, 800, 6400 / 8])
    steps[3]["ttft_ms_p99"] = 999.0  # stays under the 1 s limit: only the growth rule can fire
    steps[2]["ttft_ms_p99"] = 300.0
    g = growth_factors(steps, "context_tokens")
    assert g[2] == pytest.approx(1.5) and g[3] == pytest.approx(999 / 300 / 2)
    assert unbounded_growth(steps, "context_tokens") is None  # 1.5 is not > 1.5
    steps[2]["ttft_ms_p99"] = 320.0  # 320/100/2 = 1.6 and 999/320/2 = 1.56: two steps over the margin
    assert unbounded_growth(steps, "context_tokens") == 2
    col = collapse_point(steps, axis="context_tokens", throughput_key="prompt_tok_s")
    assert (col["collapse_at"], col["collapse_cause"], col["collapse_index"]) == (4096, "unbounded", 2)


def test_one_superlinear_step_alone_is_not_unbounded():
    steps = ctx_steps([50, 300, 600, 1000 - 1])  # one jump (factor 3), then proportional
    assert unbounded_growth(steps, "context_tokens") is None


def test_p99_over_one_second_and_censoring():
    col = collapse_point(ctx_steps([100, 200, 1001, 2000]), axis="context_tokens")
    assert (col["collapse_at"], col["collapse_cause"], col["censored"]) == (4096, "p99", False)
    col = collapse_point(ctx_steps([100, 200, 400, 800]), axis="context_tokens")
    assert col["collapse_at"] is None and col["censored"] is True


def test_falling_throughput_errors_and_preemptions():
    steps = ctx_steps([100, 200, 400, 800])
    steps[2]["prompt_tok_s"] = 850.0  # < 90 % of the best (1000)
    col = collapse_point(steps, axis="context_tokens", throughput_key="prompt_tok_s")
    assert (col["collapse_at"], col["collapse_cause"]) == (4096, "throughput")
    steps = ctx_steps([100, 200, 400, 800])
    steps[1].update(n_errors=3, error_classes={"http_400": 2, "timeout": 1})
    col = collapse_point(steps, axis="context_tokens", throughput_key="prompt_tok_s")
    assert col["collapse_at"] == 2048 and "rejection http_400 2" in col["collapse_reason"]
    assert "timeout (1)" in step_causes(steps[1])
    steps = ctx_steps([100, 200, 400, 800])
    steps[3]["preemptions"] = 5
    assert collapse_point(steps, axis="context_tokens")["collapse_at"] == 8192
    assert step_causes(steps[3]) == ["preemption"]


def test_categorical_axis_uses_the_given_order():
    steps = [{"profile": p, "ttft_ms_p99": v, "req_s": 10.0} for p, v in (("stress", 900), ("comfy", 100), ("spill", 300))]
    # comfy -> spill -> stress: 3x and 3x growth at a load ratio of 1: unbounded from spill on
    col = collapse_point(steps, axis="profile", order=["comfy", "spill", "stress"])
    assert (col["collapse_at"], col["collapse_cause"]) == ("spill", "unbounded")


def test_collapse_on_concurrency_keeps_the_h0_behaviour():
    base = [{"concurrency": c, "ttft_ms_p99": 100.0 * c, "n_errors": 0, "req_s": 10.0 * c} for c in (1, 2, 4, 8, 16)]
    assert collapse_point(base)["collapse_at"] == 16


def test_envelope_before_the_collapse():
    steps = ctx_steps([100, 200, 1001, 2000])
    assert envelope(steps, collapse_point(steps, axis="context_tokens"))[0] == 2048
    steps = ctx_steps([1001, 2000, 3000, 4000])
    env, note = envelope(steps, collapse_point(steps, axis="context_tokens"))
    assert env is None and "below the sweep" in note
    steps = ctx_steps([10, 20, 40, 80])
    env, note = envelope(steps, collapse_point(steps, axis="context_tokens"))
    assert env == 8192 and "censored" in note


# -------------------------------------------------------------------------------------- storage knee

def knee_points(fetch, ttft=100.0):
    return [{"context_tokens": c, "tier2_fetch_ms_p95": f, "ttft_ms_p95": ttft}
            for c, f in zip((256, 512, 1024, 2048), fetch)]


def test_storage_knee_at_a_middle_point():
    k = storage_knee(knee_points([0, 10, 50, 80]), "context_tokens")
    assert (k["knee_at"], k["censored"], k["n_with_data"]) == (1024, None, 4)


def test_storage_knee_at_the_first_point_is_left_censored():
    k = storage_knee(knee_points([60, 70, 80, 90]), "context_tokens")
    assert (k["knee_at"], k["censored"]) == (256, "below")


def test_storage_knee_never_reached_is_right_censored():
    k = storage_knee(knee_points([0, 5, 10, 49.9]), "context_tokens")
    assert (k["knee_at"], k["censored"]) == (None, "above")
    assert "49.9%" in k["note"]  # the largest share, as a percentage


def test_storage_knee_at_the_last_point():
    k = storage_knee(knee_points([0, 5, 10, 50]), "context_tokens")
    assert (k["knee_at"], k["censored"]) == (2048, None)


def test_storage_knee_without_data_says_why():
    k = storage_knee(knee_points([None, None, None, None]), "context_tokens")
    assert k["knee_at"] is None and k["n_with_data"] == 0 and "no point has both" in k["note"]


def test_weighted_percentile():
    assert weighted_percentile([(10.0, 1), (20.0, 1)], 50) == 10.0
    assert weighted_percentile([(10.0, 1), (20.0, 99)], 95) == 20.0
    assert weighted_percentile([], 95) is None


def test_admission_limit_is_a_throughput_collapse():
    steps = ctx_steps([100, 200, 400, 800])
    for s, run in zip(steps, (8, 8, 5, 3)):
        s.update(concurrency=8, running_max=run, waiting_max=0 if run == 8 else 3)
    col = collapse_point(steps, axis="context_tokens", throughput_key="prompt_tok_s")
    assert (col["collapse_at"], col["collapse_cause"]) == (4096, "throughput")
    assert "at most 5 of 8 users" in col["collapse_reason"]
    assert step_causes(steps[3]) == ["admission limit (at most 3 of 8 users running)"]
    steps[2]["waiting_max"] = 0  # fewer running but nobody waiting: the clients, not the engine
    assert collapse_point(steps, axis="context_tokens")["collapse_at"] == 8192


def test_storage_knee_with_histogram_buckets_is_undecided_where_a_bucket_straddles_the_line():
    # TTFT p95 100 ms at every point: the line is 50 ms. Fetch p95 buckets (10, 25], (25, 50], (50, 75], (75, 100]:
    # the (25, 50] bucket at 2048 may hold 49 ms or 26 ms -> undecided; the knee is certain only at 4096
    pts = [{"context_tokens": c, "ttft_ms_p95": 100.0, "f": f, "lo": lo, "hi": hi}
           for c, f, lo, hi in ((1024, 24.0, 10.0, 25.0), (2048, 48.0, 25.0, 50.0), (4096, 70.0, 50.0, 75.0))]
    k = storage_knee(pts, "context_tokens", fetch_key="f", bounds=("lo", "hi"))
    assert (k["knee_from"], k["knee_at"], k["undecided"], k["censored"]) == (2048, 4096, [2048], None)
    assert "2048 the fetch p95's histogram bucket straddles" in k["note"]
    # without the bounds the interpolated value alone decides (48 < 50: not reached at 2048)
    k = storage_knee(pts, "context_tokens", fetch_key="f")
    assert (k["knee_from"], k["knee_at"], k["undecided"]) == (4096, 4096, [])
    k = storage_knee(pts[:2], "context_tokens", fetch_key="f", bounds=("lo", "hi"))
    assert k["knee_at"] is None and k["censored"] == "above" and "at or after context_tokens 2048" in k["note"]
