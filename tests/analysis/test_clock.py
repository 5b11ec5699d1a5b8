"""One clock for thresholds (kvharness.clock): limits are stated in the stack's time and compared with
the measured wall time divided by nothing but the cell's speedup."""

import json

from kvharness.analysis.cells import cell_row
from kvharness.analysis.knee import collapse_point, step_causes
from kvharness.clock import describe, speedup_of, wall_ms, wall_slo


def test_conversion_and_its_wording():
    assert speedup_of({"stack": {"kind": "sim"}, "sim": {"speedup": 20}}) == 20.0
    assert speedup_of({"stack": {"kind": "external"}, "sim": {"speedup": 20}}) == 1.0  # a real stack runs in real time
    mocker = {"kind": "dynamo", "pre_commands": [{"argv": ["{python}", "-m", "dynamo.mocker", "--speedup-ratio", "{speedup}"]}]}
    assert speedup_of({"stack": mocker, "sim": {"speedup": 20}}) == 20.0  # the mocker runs at the sim's speedup
    assert wall_ms(1000, 20) == 50.0 and wall_ms(None, 20) is None
    assert wall_slo({"ttft_ms": 1000, "tpot_ms": 100, "e2e_ms": None}, 20) == {"ttft_ms": 50.0, "tpot_ms": 5.0, "e2e_ms": None}
    assert describe(1000, 20) == "1000 ms stack time (50 ms wall at speedup 20)" and describe(1000, 1) == "1000 ms"


def test_collapse_limit_is_compared_in_wall_time():
    # 60 ms of wall time at speedup 20 is 1.2 s of the stack's time: over SPEC's 1000 ms limit; at speedup 1 it is not
    steps = [{"concurrency": c, "ttft_ms_p99": p99, "req_s": 10.0 * c, "speedup": 20} for c, p99 in ((1, 20.0), (2, 60.0))]
    col = collapse_point(steps)
    assert col["collapse_at"] == 2 and col["collapse_cause"] == "p99"
    assert "1000 ms stack time (50 ms wall at speedup 20)" in col["collapse_reason"]
    assert collapse_point([{**s, "speedup": 1} for s in steps])["collapse_at"] is None
    assert step_causes(steps[1]) == ["p99 > 1000 ms stack time (50 ms wall at speedup 20)"]


def test_goodput_slo_is_converted_with_the_cells_speedup(tmp_path):
    spec = {"hyp": "H", "cell": "c", "stack": {"name": "sim-A", "kind": "sim"}, "role": "A", "profile": "p",
            "sim": {"speedup": 20}, "sweep": {"context_tokens": 1024},
            "load": {"concurrency": 1, "slo": {"ttft_ms": 1000}, "workload": {"kind": "sessioned_chat", "first_turn_tokens": 1024}},
            "tiers": {"tier0_bytes": 1, "tier1_bytes": 1, "tier2_bytes": 1, "memory_budget_bytes": 2}}
    (tmp_path / "cell.json").write_text(json.dumps(spec))
    (tmp_path / "summary.json").write_text(json.dumps({"status": "ok"}))
    recs = [{"rc": 0, "lat_ttft_ms": t, "lat_e2e_ms": t + 1, "sched_ns": i, "end_ns": i + 1, "output_tokens": 2}
            for i, t in enumerate((10.0, 40.0, 60.0, 900.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    row = cell_row(tmp_path)
    assert row["speedup"] == 20.0
    assert row["good_fraction"] == 0.5  # 10 and 40 ms meet 50 ms of wall time; 60 and 900 do not
    assert row["context_tokens"] == 1024  # a chat session's context is its first turn, never blank


def test_points_are_keyed_by_context_for_chat_sessions(tmp_path):
    from kvharness.analysis.run import points_table

    rows = []
    for ctx in (1024, 6144):
        d = tmp_path / f"c{ctx}"
        d.mkdir()
        spec = {"hyp": "H9", "cell": d.name, "stack": {"name": "sim-B", "kind": "sim"}, "role": "B", "profile": "p",
                "sim": {"speedup": 1}, "sweep": {"context_tokens": ctx, "pressure_bytes": 0},
                "load": {"concurrency": 1, "workload": {"kind": "sessioned_chat", "first_turn_tokens": ctx}},
                "tiers": {"tier0_bytes": 1, "tier1_bytes": 1, "tier2_bytes": 1, "memory_budget_bytes": 2}}
        (d / "cell.json").write_text(json.dumps(spec))
        (d / "summary.json").write_text(json.dumps({"status": "ok"}))
        (d / "metrics.jsonl").write_text(json.dumps({"rc": 0, "lat_ttft_ms": ctx / 100, "sched_ns": 0, "end_ns": 1}) + "\n")
        rows.append(cell_row(d))
    points = points_table(rows, ["stack", "context_tokens", "pressure_bytes"])
    assert [(p["context_tokens"], p["n_reps"], p["ttft_ms_p50_mean"]) for p in points] == [(1024, 1, 10.24), (6144, 1, 61.44)]
