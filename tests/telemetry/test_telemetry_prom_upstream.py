"""Mapping of upstream-shaped scrapes (HELP/TYPE, real label sets and bucket boundaries, two scrapes):
TRT-LLM (tensorrt_llm/metrics/collector.py), SGLang HiCache (python/sglang/srt/metrics/collector.py),
vLLM native offload and tiering with two data-parallel engines (vllm/v1/kv_offload/tiering/metrics.py)."""

import pytest

from kvharness.telemetry.prom import DeltaState, SeriesCache, map_deltas, parse_body

MiB = 1 << 20


def _second_tick(fixture_text, first, second, mapped_only=False):
    st = DeltaState()
    cache = SeriesCache(mapped_only=mapped_only)
    assert st.update(parse_body(fixture_text(first), cache)) is None  # baseline
    return map_deltas({"src": st.update(parse_body(fixture_text(second), cache))}, None)


@pytest.mark.parametrize("mapped_only", [False, True])
def test_trtllm_gauge_iteration_latency_hit_tokens_per_cache_tier_and_host_bytes(fixture_text, mapped_only):
    rec = _second_tick(fixture_text, "trtllm_tiers_1.prom", "trtllm_tiers_2.prom", mapped_only)
    assert rec["gauges"]["iteration_latency_s"] == pytest.approx(0.035)   # the gauge's value, not a quantile
    assert "iter_p50_ms" not in rec["server"]
    assert rec["tier0"]["hit_tokens"] == 640 and rec["tier1"]["hit_tokens"] == 320   # gpu / host cache_tier
    # onboard = host -> GPU, offload = GPU -> host: the host tier sees both
    assert rec["tier1"]["bytes_out"] == 8 * MiB and rec["tier0"]["bytes_in"] == 8 * MiB
    assert rec["tier0"]["bytes_out"] == 8 * MiB and rec["tier1"]["bytes_in"] == 8 * MiB
    assert rec["gauges"]["tier1_usage"] == pytest.approx(0.2)
    # TRT-LLM's TTFT buckets: 5 new observations, one each in (0.02,0.04], ..., (0.1,0.25]: p50 at rank 2.5
    assert rec["server"]["ttft_p50_ms"] == pytest.approx(70.0)


@pytest.mark.parametrize("mapped_only", [False, True])
def test_sglang_cached_tokens_split_by_cache_source_and_load_back_fetch(fixture_text, mapped_only):
    rec = _second_tick(fixture_text, "sglang_hicache_1.prom", "sglang_hicache_2.prom", mapped_only)
    assert rec["tier0"]["hit_tokens"] == 1500      # cache_source="device"
    assert rec["tier1"]["hit_tokens"] == 800       # cache_source="host" is tier 1, not tier 0
    assert rec["tier2"]["hit_tokens"] == 64        # cache_source="storage"
    assert rec["tier0"]["miss_tokens"] == 6000 - 1500
    assert rec["server"]["load_back_tokens"] == 800 and rec["server"]["evicted_tokens"] == 1536
    assert rec["server"]["backup_tokens"] == 1536 and rec["server"]["storage_backup_tokens"] == 256
    assert rec["server"]["storage_prefetched_tokens"] == 64
    # load_back_duration_seconds (SGLang's buckets 1 ms .. 1 s): 10 new loads -> tier-1 fetch percentiles
    t1 = rec["tier1"]
    assert t1["fetch_p50_ms"] == pytest.approx(5.5) and t1["fetch_p95_ms"] == pytest.approx(28.75)
    assert t1["fetch_p99_ms"] == pytest.approx(29.75)
    assert rec["gauges"]["tier1_used_tokens"] == 8192 and rec["gauges"]["tier1_total_tokens"] == 65536


def test_sglang_without_cache_source_counts_tier0(fixture_text):
    rec = _second_tick(fixture_text, "sglang_1.prom", "sglang_2.prom")
    assert rec["tier0"]["hit_tokens"] is not None and rec["tier1"]["hit_tokens"] is None


@pytest.mark.parametrize("mapped_only", [False, True])
def test_vllm_offload_and_tiering_counters_and_per_engine_usage(fixture_text, mapped_only):
    rec = _second_tick(fixture_text, "vllm_offload_1.prom", "vllm_offload_2.prom", mapped_only)
    g = rec["gauges"]
    assert g["kv_cache_usage"] == pytest.approx(0.44)        # two engines at 0.44 each: 0.44, not 0.88
    assert g["kv_cache_usage_max"] == pytest.approx(0.44)
    assert g["requests_running"] == 8                         # counts do add up over engines
    # native offload: load = CPU -> GPU (4 MiB over both engines), store = GPU -> CPU (8 MiB)
    assert rec["tier0"]["bytes_in"] == 4 * MiB
    assert rec["tier0"]["bytes_out"] == 8 * MiB
    # tiering: "0:primary" is the CPU tier (tier 1), "1:fs" the file tier (tier 2)
    assert (rec["tier1"]["hits"], rec["tier1"]["misses"]) == (8, 12)
    assert (rec["tier2"]["hits"], rec["tier2"]["misses"]) == (6, 2)
    assert rec["tier2"]["bytes_out"] == 12 * MiB and rec["tier2"]["bytes_in"] == 4 * MiB
    assert rec["tier1"]["bytes_out"] == 4 * MiB + 4 * MiB     # to GPU (load) + cascaded to fs
    assert rec["tier1"]["bytes_in"] == 8 * MiB + 12 * MiB     # from GPU (store) + promoted from fs


def test_a_stack_config_names_its_own_fetch_histograms(fixture_text):
    """fetch_histograms (stack config -> --fetch-hist): a family no table knows, or one label's series,
    becomes that tier's fetch percentiles; with mapped_only the family is kept, not skipped."""
    st = DeltaState()
    cache = SeriesCache(mapped_only=True, extra_hists=frozenset({"sglang:load_back_duration_seconds"}))
    st.update(parse_body(fixture_text("sglang_hicache_1.prom"), cache))
    d = st.update(parse_body(fixture_text("sglang_hicache_2.prom"), cache))
    rec = map_deltas({"src": d}, None, {"tier2": "sglang:load_back_duration_seconds"})
    assert rec["tier2"]["fetch_p50_ms"] == pytest.approx(5.5) and rec["tier2"]["fetch_p99_ms"] == pytest.approx(29.75)
    # a labelled series: the simulator's per-tier histogram picked by its tier label
    st = DeltaState()
    st.update(parse_body(fixture_text("kvsim_1.prom")))
    d = st.update(parse_body(fixture_text("kvsim_2.prom")))
    plain = map_deltas({"src": d}, None)
    picked = map_deltas({"src": d}, None, {"tier0": "kvsim_tier_fetch_seconds{tier=2}"})
    assert picked["tier0"]["fetch_p95_ms"] == plain["tier2"]["fetch_p95_ms"] == pytest.approx(4.75)
