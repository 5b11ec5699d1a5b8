"""H7's verdict answers its whole question on hand-made rows: collector cost, p99 impact (with the reps'
intervals, or saying one repetition leaves launch-to-launch variation uncovered) and tail attribution;
a failed gate replaces the claim that depends on it."""

from kvharness.analysis.h7 import claim_gates, h7_table, impact_rows, verdict
from kvharness.analysis.registry import Gate, Result


def row(cadence, rep, cpu, p99, covered=1.0, resolved=1.0):
    return {"stack": "sim-B", "cell": f"c{cadence}_r{rep}", "rep": rep, "telemetry_interval_ms": float(cadence),
            "collector_cpu_pct_of_core": cpu, "overhead_ok": cpu < 3.0, "ttft_ms_p99": p99, "n_ok": 600,
            "alignment": 1.0, "tail_requests": 6, "tail_covered": covered, "tail_resolved": resolved}


def result(rows, extra=()):
    table = h7_table(rows)
    return Result(tables={}, facts={"rows": table, "impact": impact_rows(table), "claim_gates": list(extra) + claim_gates(table)})


def test_one_rep_says_what_the_impact_does_not_cover():
    rows = [row(100, 0, 4.0, 110.0, resolved=0.5), row(1000, 0, 0.5, 100.0), row(5000, 0, 0.1, 100.0, covered=0.5)]
    text = verdict(result(rows))
    assert "collector cost under 3 % of a core down to a 1000 ms cadence (costliest: 4.00 % at 100 ms)" in text
    assert ("at most +10.0 % against the 5000 ms cadence (at 100 ms), without an interval (not covered: CoV of p99 "
            "TTFT across reps: one repetition per point") in text
    assert ("tail events attributable at 1000 ms (≥ 95% of p99-tail requests covered by ticks and lasting a window), "
            "not at 100 ms (covered 100%, resolved 50%), 5000 ms (covered 50%, resolved 100%)") in text


def test_reps_give_intervals_and_a_failed_gate_replaces_the_claim():
    import random

    rnd = random.Random(7)

    def sampled(cadence, rep, scale):  # 600 ok requests a rep whose p99 is about 100 x scale ms
        r = row(cadence, rep, 1.0 if cadence == 100 else 0.1, 100.0 * scale)
        r["_ttft_ms"] = [rnd.lognormvariate(0, 0.3) * 100.0 * scale / 2.0 for _ in range(600)]
        return r
    rows = [sampled(100, r, 1.5) for r in range(3)] + [sampled(5000, r, 1.0) for r in range(3)]
    impact = {r["telemetry_interval_ms"]: r for r in impact_rows(h7_table(rows))}
    fast = impact[100.0]
    # known truth: the 100 ms cells' requests are the 5000 ms ones' x 1.5, so their p99 is 1.5x
    assert fast["p99_outcome"] == "differs" and fast["p99_differs"] is True
    assert fast["p99_ratio_ci95_low"] < 1.5 < fast["p99_ratio_ci95_high"] and fast["p99_ratio_ci95_low"] > 1.2
    assert f"100 ms {fast['p99_ratio']:.2f}× [" in verdict(result(rows)) and "(differs)" in verdict(result(rows))
    short = Gate("enough samples for p99", False, 79, ">= 299 ok requests per cell")
    text = verdict(result([{**r, "n_ok": 79} for r in rows]))
    assert "not established: enough samples for p99 79 vs >= " in text and "fewest" not in text
    text = verdict(result(rows, [short]))
    assert "p99 TTFT impact not established: enough samples for p99 79 vs >= 299 ok requests per cell" in text
    assert "collector cost under 3 % of a core down to a 100 ms cadence" in text  # cost does not read a p99
