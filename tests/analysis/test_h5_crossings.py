"""H5's crossing logic and the hit-ratio fallback on synthetic rows (fast; the model's truth is in test_h1_h5)."""

from kvharness.analysis.h1 import ttft_drift
from kvharness.analysis.h5 import crossings
from kvharness.analysis.tiercounts import hit_ratios

G = 2**30


def row(ws_gib, t0, t2_blocks, adapters=4):
    return {"stack": "sim-B", "lora_adapters": adapters, "working_set_bytes": ws_gib * G, "t0_hit_ratio": t0,
            "tier2_hit_blocks": t2_blocks, "tier0_bytes": 2 * G, "tier1_bytes": 4 * G}


def test_crossings_count_steps_from_the_tier_boundaries():
    table = [row(1, 0.9, 0), row(1.5, 0.88, 0), row(3, 0.3, 0), row(5, 0.0, 10), row(8, 0.0, 500)]
    c = crossings(table)["sim-B, 4 adapters"]
    assert (c["past_t0"], c["t0_fell_at"], c["t0_fall_step"]) == (2, 2, 0)
    # inclusive tiers: disk reads start past max(T0, T1) = 4 GiB (index 3), not T0+T1 = 6 GiB (index 4)
    assert (c["past_t0_t1"], c["past_onset"], c["t2_first_at"], c["t2_first_step"]) == (4, 3, 3, 0)


def test_a_series_that_never_falls_or_never_reaches_t2():
    c = crossings([row(1, 0.9, 0), row(3, 0.89, 0)])["sim-B, 4 adapters"]
    assert c["t0_fell_at"] is None and c["t0_fall_step"] is None and c["t2_first_at"] is None


def test_hit_ratios_prefer_simulator_ground_truth_then_matched_tokens():
    sim = {"sim_tier0_hit_blocks": 60, "sim_tier1_hit_blocks": 20, "sim_tier2_hit_blocks": 10, "sim_tier0_miss_blocks": 40}
    r = hit_ratios(sim, 1000, 10)
    assert (r["t0_hit_ratio"], r["t1_hit_ratio"], r["t2_hit_ratio"]) == (0.6, 0.2, 0.1)
    real = {"tier1_hits": 20, "tier2_hits": 10, "matched_tokens": 900}  # 90 blocks matched, 30 of them onboarded
    r = hit_ratios(real, 1000, 10)
    assert (r["t0_hit_ratio"], r["t1_hit_ratio"], r["t2_hit_ratio"]) == (0.6, 0.2, 0.1)
    assert hit_ratios({}, None, 10)["t0_hit_ratio"] is None


def test_ttft_drift_compares_thirds_by_send_time():
    recs = [{"rc": 0, "lat_ttft_ms": 10.0 + (20 if i >= 6 else 0), "sched_ns": i} for i in range(9)]
    assert ttft_drift(recs, None) == (10.0, 30.0, 20.0)
    assert ttft_drift(recs[:3], None) == (None, None, None)


def test_proxy_counters_from_the_raw_scrapes(tmp_path):
    import gzip
    import json

    from kvharness.analysis.tiercounts import proxy_counters

    def body(loads, reads):
        return f"# TYPE kvproxy_lora_loads_total counter\nkvproxy_lora_loads_total {loads}\nkvproxy_lora_read_bytes_total {reads}\n"

    lines = [{"tick": i, "mono_ns": t, "source": "proxy", "body": body(l, 1024 * l)}
             for i, (t, l) in enumerate([(100, 3), (200, 5), (300, 9)])]
    lines.insert(1, {"tick": 1, "mono_ns": 150, "source": "engine", "body": "kvproxy_lora_loads_total 99\n"})
    with gzip.open(tmp_path / "scrapes.jsonl.gz", "wt") as fh:
        for x in lines:
            fh.write(json.dumps(x) + "\n")
        fh.write('{"torn')
    c = proxy_counters(tmp_path, 250)
    assert (c["lora_loads"], c["lora_loads_all"], c["lora_file_read_bytes"]) == (4, 9, 4096)
    assert proxy_counters(tmp_path / "none", 0) is None
