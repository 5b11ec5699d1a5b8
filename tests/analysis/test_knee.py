"""U_work and collapse point on hand-made tables with known answers."""

import pytest

from kvharness.analysis.knee import collapse_point, is_stable, u_work


def steps(*pairs):
    """(concurrency, p99/p50 ratio) pairs -> steps with p50 = 100 ms."""
    return [{"concurrency": c, "ttft_ms_p50": 100.0, "ttft_ms_p99": 100.0 * ratio} for c, ratio in pairs]


def test_never_stable_has_no_uwork():
    result = u_work(steps((1, 2.5), (2, 3.0), (4, 4.0)))
    assert result["u_work"] is None
    assert result["censored"] is False


def test_stable_to_the_end_is_censored_at_last_step():
    result = u_work(steps((1, 1.1), (2, 1.2), (4, 1.3), (8, 1.9)))
    assert result["u_work"] == 8
    assert result["censored"] is True


def test_one_unstable_blip_is_skipped_past():
    # 8 is a blip; 16 and 32 are stable again, 64 and 128 not: highest confirmed step is 16.
    result = u_work(steps((1, 1.0), (2, 1.0), (4, 1.0), (8, 2.4), (16, 1.5), (32, 1.6), (64, 2.2), (128, 3.0)))
    assert result["u_work"] == 16
    assert result["censored"] is False


def test_stable_step_whose_next_is_not_does_not_count():
    # 4 is stable but 8 is not: U_work is 2 (the last step confirmed by its successor).
    result = u_work(steps((1, 1.0), (2, 1.5), (4, 1.9), (8, 2.1), (16, 5.0)))
    assert result["u_work"] == 2


def test_saturated_steps_past_the_knee_never_count():
    # 16 and 32 are unstable (the knee); 64+ look stable again only because every request waits alike.
    result = u_work(steps((1, 1.0), (2, 1.3), (4, 1.1), (8, 1.7), (16, 2.4), (32, 4.1), (64, 1.8), (128, 1.3), (256, 1.3)))
    assert result["u_work"] == 4
    assert result["knee_at"] == 16
    assert result["censored"] is False


def test_exactly_two_is_stable_and_order_does_not_matter():
    assert is_stable(100.0, 200.0)
    assert not is_stable(100.0, 200.01)
    assert not is_stable(None, 10.0)
    shuffled = steps((16, 3.0), (1, 1.0), (4, 2.0), (2, 1.0), (8, 2.5))
    assert u_work(shuffled)["u_work"] == 2


def test_collapse_point_on_latency_errors_and_throughput():
    base = [{"concurrency": c, "ttft_ms_p99": 100.0 * c, "n_errors": 0, "req_s": 10.0 * c} for c in (1, 2, 4, 8, 16)]
    assert collapse_point(base)["collapse_at"] == 16  # 1600 ms > 1000 ms
    errs = [dict(s) for s in base[:3]]
    errs[2]["n_errors"] = 3
    assert collapse_point(errs)["collapse_at"] == 4
    falling = [{"concurrency": 1, "ttft_ms_p99": 10, "req_s": 50}, {"concurrency": 2, "ttft_ms_p99": 10, "req_s": 40}]
    assert collapse_point(falling)["collapse_at"] == 2
    assert collapse_point(base[:3])["collapse_at"] is None


def test_h0_note_names_the_unstable_steps_when_no_pair_is_stable():
    from kvharness.analysis.h0 import h0_tables

    rows = [{**s, "stack": "sim-A", "role": "A"} for s in steps((1, 1.0), (2, 2.2), (4, 1.1), (8, 2.1), (16, 2.5))]
    _summary, uwork_rows = h0_tables(rows)
    row = uwork_rows[0]
    assert row["u_work"] is None and row["u_work_used"] == 1
    assert "p99 > 2 x p50 at concurrency 2, 8, 16" in row["note"]


def test_h0_computes_uwork_per_rep_and_headlines_the_lower_median():
    from kvharness.analysis.h0 import h0_tables, headline

    rep0 = steps((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (16, 3.0), (32, 3.0))   # U_work 4
    rep1 = steps((1, 1.0), (2, 1.0), (4, 1.0), (8, 3.0), (16, 3.0), (32, 3.0))   # U_work 2
    rep2 = steps((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (16, 1.0), (32, 3.0))   # U_work 8 (knee beyond 16)
    rows = [{**s, "stack": "sim-A", "role": "A", "rep": rep} for rep, rs in enumerate((rep0, rep1, rep2)) for s in rs]
    summary, uwork_rows = h0_tables(rows)
    row = uwork_rows[0]
    assert row["u_work_reps"] == "4;2;8" and row["u_work_min"] == 2 and row["u_work_max"] == 8
    assert row["u_work"] == 4 and row["headline_rep"] == 0 and row["reps_agree"] is False
    assert "differs between reps" in row["note"]
    two = [r for r in rows if r["rep"] < 2]
    assert h0_tables(two)[1][0]["u_work"] == 2  # two reps: the smaller value
    assert headline({0: {"u_work": None}, 1: {"u_work": 4}}) == 0  # a rep without U_work ranks lowest
    step8 = next(s for s in summary if s["concurrency"] == 8)
    assert step8["n_reps"] == 3 and step8["stable_reps"] == "2/3"
    assert step8["ttft_ms_p99"] == pytest.approx((100.0 + 300.0 + 100.0) / 3)
