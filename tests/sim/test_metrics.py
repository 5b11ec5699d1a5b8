"""Metric families carry the real stacks' exact names; kvbm_* lives on its own port without _total."""

from __future__ import annotations

import json

from .conftest import FAST


def _one_request(sim):
    st, _ = sim.post("/v1/completions", json.dumps({"prompt": "a b c d", "max_tokens": 3, "stream": True}).encode())
    assert st == 200


def test_mode_a_trtllm_names(start_sim):
    sim = start_sim("--mode", "A", *FAST)
    _one_request(sim)
    m = sim.metrics()
    names = {k.split("{")[0] for k in m}
    for n in ("trtllm_time_to_first_token_seconds_count", "trtllm_e2e_request_latency_seconds_count",
              "trtllm_time_per_output_token_seconds_count", "trtllm_request_queue_time_seconds_count",
              "trtllm_kv_cache_max_blocks", "trtllm_num_requests_waiting", "kvsim_queue_depth", "kvsim_speedup",
              "kvsim_block_bytes_scale"):
        assert n in names, n
    assert not any(n.startswith(("kvbm_", "dynamo_")) for n in names)
    assert m['trtllm_request_success_total{model_name="llama-3.1-8b",engine_type="trtllm",finished_reason="length"}'] == 1
    assert m["kvsim_speedup"] == 50


def test_mode_b_dynamo_and_kvbm_names(start_sim):
    sim = start_sim("--mode", "B", *FAST)
    _one_request(sim)
    m = sim.metrics()
    names = {k.split("{")[0] for k in m}
    for n in ("dynamo_frontend_time_to_first_token_seconds_count", "dynamo_frontend_inter_token_latency_seconds_count",
              "dynamo_frontend_request_duration_seconds_count", "dynamo_frontend_requests_total",
              "kvsim_queue_depth"):
        assert n in names, n
    assert not any(n.startswith("kvbm_") for n in names)
    k = sim.metrics(kvbm=True)
    for n in ("kvbm_offload_blocks_d2h", "kvbm_offload_blocks_h2d", "kvbm_offload_blocks_d2d",
              "kvbm_onboard_blocks_h2d", "kvbm_onboard_blocks_d2d", "kvbm_matched_tokens",
              "kvbm_host_cache_hit_rate", "kvbm_disk_cache_hit_rate"):
        assert n in k, n
    _, text = sim.get("/metrics", port=sim.metrics_port)
    assert b"# TYPE kvbm_offload_blocks_d2h counter" in text
    assert b"_total" not in text


def test_exposition_parses_and_histograms_are_cumulative():
    from prometheus_client.parser import text_string_to_metric_families

    from kvharness.sim.exporters import SimMetrics

    m = SimMetrics("B", "m", speedup=20, block_bytes=2 << 20, block_bytes_scale=1 / 32, tokens_per_block=32,
                   t0_blocks=10, t1_blocks=10, t2_blocks=10, max_batch=4, max_num_tokens=64)
    for v in (0.002, 0.02, 0.2, 2.0, 200.0):
        m.ttft.observe(v)
    m.itl_hist.observe_n(0.01, 5)
    fams = {f.name: f for f in text_string_to_metric_families(m.main.render().decode())}
    ttft = fams["dynamo_frontend_time_to_first_token_seconds"]
    buckets = [s for s in ttft.samples if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 5 and buckets[-1].labels["le"] == "+Inf"
    assert [s.value for s in ttft.samples if s.name.endswith("_count")] == [5]
    itl = fams["dynamo_frontend_inter_token_latency_seconds"]
    assert [s.value for s in itl.samples if s.name.endswith("_count")] == [5]
    kfams = {f.name: f for f in text_string_to_metric_families(m.kvbm.render().decode())}
    assert kfams["kvbm_offload_blocks_d2h"].type == "counter"
    assert kfams["kvbm_host_cache_hit_rate"].type == "gauge"
