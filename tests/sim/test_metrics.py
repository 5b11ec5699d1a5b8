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
