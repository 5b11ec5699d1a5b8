"""H4 / H6 table logic on synthetic rows (the end-to-end run is in test_storage_e2e.py)."""

import numpy as np

from kvharness.analysis.h4 import summarize
from kvharness.analysis.h6 import hit_knee, knee_table, lfu_beats_lru, non_decreasing, policy_table
from kvharness.analysis.registry import Gate

GIB = 1024**3


def h4_row(bio, rep, scale, fetch=10.0, r_await=1.0, reads=1 << 20):
    """A cell of hand-made TTFTs: 1500 seeded lognormal requests (sigma 0.2) times ``scale``."""
    ttft = list(scale * np.random.default_rng(rep + (100 if bio == "on" else 0)).lognormal(np.log(40.0), 0.2, 1500))
    return {"stack": "sim-B", "role": "B", "profile": "spill", "background_io": bio, "rep": rep, "ttft_ms_p99": max(ttft),
            "ttft_ms_p50": 40.0 * scale, "tier2_fetch_ms_mean": fetch, "nvme_r_await_ms_mean": r_await,
            "tier2_read_kv_bytes": reads, "_ttft_ms": ttft}


def test_h4_moved_held_inconclusive_and_the_mechanism_only_from_evidence():
    off = [h4_row("off", i, 1.0, r_await=1.0 + 0.01 * i) for i in range(3)]
    on = [h4_row("on", i, 1.5, fetch=20.0, r_await=2.0 + 0.01 * i) for i in range(3)]
    summary, compare = summarize(off + on)
    assert {(s["background_io"], s["n_reps"]) for s in summary} == {("off", 3), ("on", 3)}
    c = compare[0]
    # 3 + 3 reps with every on r_await above every off one: p = 1 / C(6, 3) = 0.05 -> rises
    assert c["outcome"] == "moved" and c["r_await_rises"] is True and c["fetch_rises"] is True
    assert c["p99_ratio_ci95_low"] < 1.5 < c["p99_ratio_ci95_high"] and c["mechanism"].startswith("tier-2 reads")
    flat = [h4_row("on", i, 1.5, fetch=10.0 - i, r_await=1.0 - 0.1 * i) for i in range(3)]
    c = summarize(off + flat)[1][0]
    assert c["outcome"] == "moved" and c["mechanism"].startswith("not established: neither")
    held = [h4_row("on", i, 1.0) for i in range(3)]
    assert summarize(off + held)[1][0]["outcome"] in ("held", "inconclusive")
    same = [dict(r, background_io="on") for r in off]  # the very same requests: ratio 1, +-5 % resolved
    c = summarize(off + same)[1][0]
    assert c["p99_ratio"] == 1 and c["outcome"] == "held" and c["mechanism"] is None


def h6_row(t0, t1, c, hit, policy="lru", scan=0.0, fam="total", p50=10.0, p99=15.0):
    return {"family": fam, "tier0_bytes": t0, "tier1_bytes": t1, "memory_budget_bytes": t0 + t1, "eviction_policy": policy,
            "scan_share": scan, "concurrency": c, "memory_hit_pct": hit, "ttft_ms_p50": p50, "ttft_ms_p99": p99, "rep": 0}


def test_hit_knee_is_the_last_step_above_half():
    steps = [{"concurrency": 8, "memory_hit_pct": 90}, {"concurrency": 16, "memory_hit_pct": 60},
             {"concurrency": 32, "memory_hit_pct": 10}, {"concurrency": 64, "memory_hit_pct": 55}]
    assert hit_knee(steps) == (16, False)
    assert hit_knee(steps[:2]) == (16, True)
    assert hit_knee([{"concurrency": 8, "memory_hit_pct": 5}]) == (None, False)


def test_knees_per_point_and_monotonicity():
    rows = [h6_row(GIB // 3, 2 * GIB // 3, c, h) for c, h in ((8, 90), (16, 5), (32, 1))]
    rows += [h6_row(4 * GIB // 3, 8 * GIB // 3, c, h) for c, h in ((8, 95), (16, 92), (32, 80))]
    knees = knee_table(rows)
    assert [k["hit_knee"] for k in knees] == [8, 32]
    assert non_decreasing(knees, "hit_knee") is True
    assert non_decreasing(list(reversed([{**k, "memory_budget_bytes": -k["memory_budget_bytes"]} for k in knees])),
                          "hit_knee") is False


def test_policy_table_and_lfu_gate():
    rows = [h6_row(GIB, GIB, 8, 12.0, "lru", 0.5, "policy"), h6_row(GIB, GIB, 8, 20.0, "lfu", 0.5, "policy"),
            h6_row(GIB, GIB, 8, 9.0, "fifo", 0.5, "policy"), h6_row(GIB, GIB, 16, 3.0, "lru", 0.5, "policy"),
            h6_row(GIB, GIB, 16, 3.5, "lfu", 0.5, "policy")]
    table = policy_table(rows)
    lfu8 = next(r for r in table if r["eviction_policy"] == "lfu" and r["concurrency"] == 8)
    assert lfu8["vs_lru_memory_hit_pp"] == 8.0
    assert lfu_beats_lru(table) == (True, 8.0)
    worse = [dict(r, vs_lru_memory_hit_pp=-5.0) if r["eviction_policy"] == "lfu" else r for r in table]
    assert lfu_beats_lru(worse)[0] is False


def test_h6_censored_knees_are_marked_and_a_failed_gate_changes_the_sentence():
    from kvharness.analysis.h6 import display_knees, verdict
    from kvharness.analysis.registry import Result

    # the larger total holds >= 50 % hits and a stable tail to the last step: both knees censored at 32
    rows = [h6_row(GIB // 3, 2 * GIB // 3, c, h) for c, h in ((8, 90), (16, 5), (32, 1))]
    rows += [h6_row(4 * GIB // 3, 8 * GIB // 3, c, h) for c, h in ((8, 95), (16, 92), (32, 80))]
    knees = knee_table(rows)
    small, large = sorted(display_knees(knees), key=lambda k: k["memory_budget_bytes"])
    assert (large["hit_knee"], large["u_work"]) == ("32+", "32+") and small["hit_knee"] == "8"
    facts = {"knees": knees, "policy": [], "total_hit_knee_monotone": True, "total_u_work_monotone": True,
             "lfu_beats_lru": False, "lfu_gap_pp": 0.4,
             "claim_gates": [Gate("enough samples for p99 (total)", True, 600, ">= 500")]}
    text = verdict(Result(tables={}, facts=facts))
    assert "the hit-rate knee never falls (8, 32+ users)" in text and "U_work " in text
    assert "LFU beats LRU (" not in text
    assert "not established: LFU beats LRU on the hot-set + scan workload 0.4 vs > 1 pp, never below" in text
    facts["claim_gates"] = [Gate("enough samples for p99 (total)", False, 79, ">= 500 ok requests per cell")]
    assert "not established: enough samples for p99 (total) 79 vs >= 500 ok requests per cell" in \
        verdict(Result(tables={}, facts=facts))
