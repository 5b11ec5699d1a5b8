"""The plan's quality gates on hand-made data with known answers."""

import json

import pytest

from kvharness.analysis import gates
from kvharness.analysis.evidence import aggregate


def test_alignment_gate_reports_the_worst_cell_against_95_percent():
    ok = gates.alignment_gate([{"cell": "a", "alignment": 0.99}, {"cell": "b", "alignment": 0.95}])
    assert ok.passed is True and ok.value == 95.0 and ok.limit == ">= 95 %"  # value and limit in one unit
    bad = gates.alignment_gate([{"cell": "a", "alignment": 0.99}, {"cell": "b", "alignment": 0.94}])
    assert bad.passed is False and bad.value == 94.0 and "b" in bad.note
    missing = gates.alignment_gate([{"cell": "a", "alignment": 0.99}, {"cell": "b", "alignment": None}])
    assert missing.passed is False and "without a collector summary" in missing.note
    assert gates.alignment_gate([]).passed is None


def test_samples_gate_needs_299_ok_requests_for_p99():
    # 1 - 0.99^298 = 0.9500 - 0.0001 < 0.95 <= 1 - 0.99^299: the largest of 299 bounds p99 at 95 %
    assert 1 - 0.99 ** 298 < 0.95 <= 1 - 0.99 ** 299
    rows = [{"cell": "a", "n_ok": 800}, {"cell": "b", "n_ok": 298}]
    g = gates.samples_gate(rows)
    assert g.passed is False and g.value == 298 and "299" in g.limit
    assert gates.samples_gate([{"cell": "a", "n_ok": 299}]).passed is True
    assert gates.samples_gate([{"cell": "a", "n_ok": 59}], q=95).passed is True  # 1 - 0.95^59 >= 0.95
    assert gates.samples_gate([{"cell": "a", "n_ok": 58}], q=95).passed is False


def test_gate_sentence_reads_the_gates():
    ok = {"name": "enough samples for p99", "passed": True, "value": 400, "limit": ">= 299"}
    bad = {"name": "p99 TTFT reproducible across reps", "passed": False, "value": 15.2, "limit": "±5 %"}
    na = {"name": "CoV of p99 TTFT across reps", "passed": None, "value": None, "limit": "< 10%"}
    finding = {"name": "B transparent vs A", "passed": False, "value": 9, "limit": "±5 %"}
    assert gates.gate_sentence("B beats A.", [ok, finding]) == "B beats A."  # a finding is not a precondition
    assert gates.gate_sentence("B beats A.", [ok, bad, na]) == \
        "not established: p99 TTFT reproducible across reps 15.2 vs ±5 %"
    assert gates.gate_sentence("B beats A.", [ok, na]) == \
        "B beats A. Does not cover: launch-to-launch variation (one repetition per point)."
    assert gates.gate_sentence("x", [finding], None).startswith("not established: B transparent")


def _rep_rows(values_by_point):
    return [{"stack": "B", "ctx": ctx, "rep": rep, "ttft_ms_p99": v}
            for ctx, values in values_by_point.items() for rep, v in enumerate(values)]


def test_cov_gate_is_the_worst_point_and_needs_two_reps():
    # CoV of (90, 100, 110) = 10/100 = 0.10 exactly: not < 10 %; (99, 100, 101): 0.01
    rows = _rep_rows({1024: [99.0, 100.0, 101.0], 2048: [90.0, 100.0, 110.0]})
    points = aggregate(rows, ["stack", "ctx"], ["ttft_ms_p99"])
    g = gates.cov_p99_gate(points, ["stack", "ctx"])
    assert g.value == pytest.approx(10.0) and g.passed is False and "ctx=2048" in g.note and g.limit == "< 10 %"
    good = aggregate(_rep_rows({1024: [99.0, 100.0, 101.0]}), ["stack", "ctx"], ["ttft_ms_p99"])
    assert gates.cov_p99_gate(good).passed is True
    single = aggregate(_rep_rows({1024: [100.0]}), ["stack", "ctx"], ["ttft_ms_p99"])
    assert gates.cov_p99_gate(single).passed is None


def test_reproducible_gate_is_the_largest_rep_deviation_from_the_point_mean():
    # mean 100; deviations 4 % and 6 %
    assert gates.p99_deviation_pct([96.0, 104.0]) == pytest.approx(4.0)
    g = gates.reproducible_p99_gate(_rep_rows({1: [96.0, 104.0], 2: [94.0, 106.0]}), ["stack", "ctx"])
    assert g.passed is False and g.value == pytest.approx(6.0) and g.limit == "±5 %"
    assert gates.reproducible_p99_gate(_rep_rows({1: [96.0, 104.0]}), ["stack", "ctx"]).passed is True
    assert gates.reproducible_p99_gate(_rep_rows({1: [96.0]}), ["stack", "ctx"]).passed is None


def test_nvme_idle_gate_within_ten_percent_or_at_the_noise_floor():
    assert gates.nvme_idle_gate(105.0, 100.0).passed is True
    g = gates.nvme_idle_gate(111.0, 100.0)
    assert g.passed is False and g.value == pytest.approx(11.0)
    assert gates.nvme_idle_gate(0.4, 0.1).passed is True  # both below 1 MiB/s: idle
    assert gates.nvme_idle_gate(50.0, 0.0).passed is False
    assert gates.nvme_idle_gate(None, 1.0).passed is None


def test_tier2_hits_gate_and_its_reader(tmp_path):
    assert gates.tier2_hits_gate(0.2).passed is True and gates.tier2_hits_gate(0.2).value == 20.0
    assert gates.tier2_hits_gate(0.2).limit == ">= 20 %"
    assert gates.tier2_hits_gate(0.19).passed is False
    assert gates.tier2_hits_gate(None).passed is None
    ticks = [{"ts": 1, "tier2": {"hits": 3, "misses": 7}}, {"ts": 2, "tier2": {"hits": 1, "misses": 9}}, {"ts": 3}]
    (tmp_path / "dynkv.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    assert gates.tier2_hit_fraction(tmp_path) == pytest.approx(4 / 20)
    sysmon = [{"ts": 1, "nvme": {"rMBs": 2.0}}, {"ts": 2, "nvme": {"rMBs": 4.0}}, {"ts": 3, "nvme": None}]
    (tmp_path / "sysmon.jsonl").write_text("".join(json.dumps(t) + "\n" for t in sysmon))
    assert gates.nvme_read_mbs(tmp_path) == pytest.approx(3.0)


def test_points_table_and_gate_status_from_hand_made_rows():
    from kvharness.analysis.gates import gate_status
    from kvharness.analysis.run import points_table

    rows = [{"stack": "B", "ctx": 1024, "rep": rep, "ttft_ms_p99": v, "ttft_ms_p50": 50.0, "n_ok": n, "status": "ok"}
            for rep, (v, n) in enumerate([(96.0, 600), (104.0, 250)])]
    (p,) = points_table(rows, ["stack", "ctx"])
    assert p["n_reps"] == 2 and p["reps"] == "0;1" and p["ttft_ms_p99_mean"] == pytest.approx(100.0)
    half = 12.706 * (8.0 / 2 ** 0.5) / 2 ** 0.5  # t(0.975, 1) * sd / sqrt(n), sd of (96, 104) = 5.657
    assert p["ttft_ms_p99_ci_high"] == pytest.approx(100.0 + half, rel=1e-3)
    assert p["ttft_p99_max_dev_pct"] == pytest.approx(4.0) and p["n_ok_min"] == 250 and p["enough_samples_p99"] is False
    assert gate_status([{"passed": True}, {"passed": None}]) == "incomplete"
    assert gate_status([{"passed": True}, {"passed": False}]) == "fail"
    assert gate_status([{"passed": None}]) == "incomplete" and gate_status([]) == "n/a"
