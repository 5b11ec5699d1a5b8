"""H2B's storage-knee table and window join on hand-made inputs: a stack without per-tier latency
(`external`) still gets a knee by the window join, or rows that say why; never an empty table."""

import json

from kvharness.analysis.h2b import knee_rows
from kvharness.analysis.spill import join_fetch_p95, window_join

GIB = 2**30


def point(ctx, ttft95, metric=None, join=None, hit=0.0, note=""):
    return {"context_tokens": ctx, "ttft_ms_p95": ttft95, "tier2_fetch_ms_p95_metric": metric,
            "tier2_fetch_ms_p95_join": join, "join_note": note, "tier2_hit_pct": hit,
            "working_set_bytes": ctx * 10 * 65536, "tier0_bytes": 1 * GIB, "tier1_bytes": 1 * GIB}


def test_stack_without_fetch_latency_gets_the_window_join_knee():
    rows = knee_rows([point(1024, 100, join=10), point(2048, 100, join=60, hit=30), point(4096, 100, join=80, hit=50)])
    by = {r["method"]: r for r in rows}
    assert by["window join"]["reported"] and not by["stack metric"]["reported"]
    assert by["window join"]["knee_at"] == 2048
    assert "exports no tier-2 fetch latency" in by["stack metric"]["note"]
    assert by["stack metric"]["methods_agree"] is None and "had no data" in by["stack metric"]["agreement_note"]
    assert {r["first_tier2_read_at"] for r in rows} == {2048}
    assert {r["working_set_exceeds_t0t1_at"] for r in rows} == {4096}  # 4096 x 10 x 64 KiB = 2.5 GiB > 2 GiB


def test_no_data_at_all_still_gives_two_rows_that_say_why():
    rows = knee_rows([point(1024, 100, note="no NVMe telemetry for the tier-2 device (sysmon nvme is null)")])
    assert [r["method"] for r in rows] == ["stack metric", "window join"]
    assert not any(r["reported"] for r in rows)
    assert "no NVMe telemetry" in rows[1]["note"]
    assert knee_rows([])[0]["note"] == "no finished cell"


def test_methods_that_disagree_say_by_how_much():
    rows = knee_rows([point(1024, 100, metric=60, join=5), point(2048, 100, metric=70, join=6),
                      point(4096, 100, metric=80, join=7)])
    assert rows[0]["knee_at"] == 1024 and rows[1]["knee_at"] is None
    assert rows[0]["methods_agree"] is False and "x the window join" in rows[0]["agreement_note"]


def write_cell(d, with_nvme=True):
    d.mkdir()
    (d / "cell.json").write_text(json.dumps({"engine": {"tokens_per_block": 32}, "telemetry": {"interval_ms": 200}}))
    (d / "collector_summary.json").write_text(json.dumps({"interval_ms": 200}))
    ticks = []
    for k in range(1, 6):
        nvme = {"device": "nvme0n1", "rps": 100.0, "r_await_ms": 2.0, "util_pct": 50.0, "r_bytes": 4096,
                "rMBs": 1.0, "aqu_sz": 1.0} if with_nvme else None
        ticks.append({"tick": k, "mono_ns": k * 200_000_000, "ts": k, "nvme": nvme})
    (d / "sysmon.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    reqs = [{"rc": 0, "lat_ttft_ms": 50.0 + i, "first_token_ns": 250_000_000 + i * 150_000_000, "prompt_tokens": 64}
            for i in range(5)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))
    return d


def test_window_join_without_tier_counters_attributes_device_reads(tmp_path):
    rows = window_join(write_cell(tmp_path / "ext"))  # no dynkv.jsonl: an external endpoint
    assert rows and all(r["tier2_fetched"] for r in rows)
    # 50 % util of a 200 ms window = 100 ms of device time, shared by the window's requests
    assert {r["t2_read_ms"] for r in rows} == {100.0}
    assert all(r["t2_fetch_est_ms"] == 100.0 / r["n_first_tokens"] for r in rows)
    value, note = join_fetch_p95(rows)
    assert value == 100.0 and "windows read tier 2" in note


def test_window_join_without_nvme_says_why(tmp_path):
    value, note = join_fetch_p95(window_join(write_cell(tmp_path / "nonvme", with_nvme=False)))
    assert value is None and "no NVMe telemetry" in note


def test_nvme_gate_is_on_the_device_with_specs_ten_percent():
    from kvharness.analysis.h2a import nvme_gate

    # the device got busier during the load while the stack itself read nothing more: SPEC's gate is on the
    # device, so the control fails (it cannot pass by construction), and the attribution says whose reads they were
    idle = {"idle_window_s": 1.0, "idle_rMBs": 10.0, "load_rMBs": 12.0, "stack_idle_read_MBs": 0.0, "stack_load_read_MBs": 0.0}
    g = nvme_gate(idle)
    assert g["nvme_gate"] is False and g["nvme_delta_pct"] == 20.0
    assert "not the stack's" in g["nvme_note"] and g["stack_delta_MBs"] == 0.0
    assert nvme_gate({**idle, "load_rMBs": 10.9})["nvme_gate"] is True     # +9 %
    assert nvme_gate({**idle, "load_rMBs": 8.0})["nvme_gate"] is False     # -20 %: not idle-like either
    assert nvme_gate({**idle, "idle_rMBs": 0.2, "load_rMBs": 0.9})["nvme_gate"] is True  # both at the noise floor
    assert nvme_gate({**idle, "idle_rMBs": 0.2, "load_rMBs": 3.0})["nvme_gate"] is False
    none = nvme_gate({"idle_window_s": None})
    assert none["nvme_gate"] is None and "no idle window" in none["nvme_note"]


def test_idle_nvme_means_see_reads_in_a_minority_of_ticks(tmp_path):
    from kvharness.analysis.spill import idle_nvme

    d = write_cell(tmp_path / "burst")
    ms = 1_000_000
    ticks = [{"tick": k, "mono_ns": k * 200 * ms, "nvme": {"rMBs": rate, "rps": 10.0}}
             for k, rate in enumerate([2.0, 2.0, 2.0, 2.0, 0.0, 40.0, 0.0, 0.0, 0.0, 0.0], start=1)]
    (d / "sysmon.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    reqs = [{"rc": 0, "sched_ns": 900 * ms, "end_ns": 2000 * ms, "lat_ttft_ms": 5.0}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))
    (d / "summary.json").write_text(json.dumps({"idle_window": {"start_mono_ns": 0, "end_mono_ns": 800 * ms, "seconds": 0.8}}))
    out = idle_nvme(d)
    assert out["idle_ticks"] == 4 and out["idle_rMBs"] == 2.0
    assert out["load_ticks"] == 6 and out["load_rMBs"] == 40.0 / 6  # one burst in six ticks: a median would say 0


def test_gated_sentence_reads_its_gates():
    from kvharness.analysis.gates import gated_sentence
    from kvharness.analysis.registry import Gate

    ok, bad = Gate("alpha (x)", True, 1, "< 2"), Gate("beta", False, 12.5, "< 10 %")
    na = Gate("gamma", None, None, ">= 2 reps", "one repetition per point")
    assert gated_sentence("B wins", [ok, bad, na], ["alpha"]) == "B wins"
    assert gated_sentence("B wins", [ok, bad, na], ["alpha", "beta"]) == "not established: beta 12.5 vs < 10 %"
    assert gated_sentence("B wins", [ok, na], ["alpha", "gamma"]) == "B wins (not covered: gamma: one repetition per point)"
    assert gated_sentence("B wins", [ok], ["delta"]) == "B wins (not covered: delta: not evaluated)"


def test_tree_io_of_this_process():
    import os

    from kvharness.procio import tree_io

    io = tree_io([os.getpid()])
    assert io is None or (io["processes"] >= 1 and io["read_bytes"] >= 0)
    assert tree_io([2**22 + 12345]) is None  # no such process


def test_h2b_verdict_reads_its_gates():
    from kvharness.analysis import h2b
    from kvharness.analysis.registry import Result

    summary = [{**point(1024, 100, metric=10, hit=0), "cell": "c1", "n_ok": 600, "ttft_ms_p99": 120.0},
               {**point(2048, 100, metric=60, hit=30), "cell": "c2", "n_ok": 600, "ttft_ms_p99": 150.0},
               {**point(4096, 100, metric=80, hit=50), "cell": "c3", "n_ok": 600, "ttft_ms_p99": 300.0}]

    def text(rows):
        tables = {"summary": rows, "storage_knee": knee_rows(rows)}
        return h2b.verdict(Result(tables=tables, facts={**tables, "claim_gates": h2b.claim_gates(tables)}))

    assert "storage knee: at 2048 tokens (stack metric method);" in text(summary)
    assert "p99 TTFT goes from 120 ms at 1024 to 300 ms at 4096 tokens." in text(summary)
    # tier 2 barely read at the knee: the knee is not established, and the sentence says by which gate
    low = [dict(r, tier2_hit_pct=5.0) if r["context_tokens"] == 2048 else r for r in summary]
    assert "storage knee: not established: tier-2 hits >= 20 % near the knee 5 vs >= 20 %" in text(low)
    # the first cell is short of requests for its p99: the p99 range is not stated
    short = [dict(summary[0], n_ok=40), *summary[1:]]
    assert "p99 TTFT not established: enough samples for p99 (first and last context) 40 vs >= " in text(short)
    assert "not established: enough samples for p95 (storage knee) 40 vs >= " in text(short)
