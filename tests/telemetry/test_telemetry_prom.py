"""Prometheus mapping on fixture texts of every supported exporter, with histograms and counter resets."""

from __future__ import annotations

import math

import pytest

from kvharness.telemetry.prom import (
    DeltaState, counter_delta, histogram_quantile, map_deltas, parse_body, parse_text,
)

MiB = 1 << 20


def _ticks(fixture_text, names, block_bytes=None):
    """Feed fixture bodies through one source's DeltaState; return the mapped record of every tick."""
    st = DeltaState()
    out = []
    for n in names:
        d = st.update(parse_body(fixture_text(n)))
        out.append(map_deltas({"src": d}, block_bytes))
    return out, st


def test_counter_delta_and_reset():
    assert counter_delta(10, 15) == 5
    assert counter_delta(10, 3) == 3      # restart: the new value is the delta
    assert counter_delta(None, 7) == 7    # a new series since the last scrape started at zero


def test_histogram_quantile_interpolates_like_prometheus():
    b = {0.01: 0, 0.05: 10, 0.1: 18, 0.5: 20, math.inf: 20}
    assert histogram_quantile(0.5, b) == pytest.approx(0.05)
    assert histogram_quantile(0.95, b) == pytest.approx(0.3)
    assert histogram_quantile(0.99, b) == pytest.approx(0.46)
    assert histogram_quantile(0.99, {0.1: 0, math.inf: 3}) == pytest.approx(0.1)  # +Inf -> top finite bound
    assert histogram_quantile(0.5, {0.1: 0, math.inf: 0}) is None
    assert histogram_quantile(0.5, {}) is None


def test_kvbm_blocks_to_tier_bytes_and_reset(fixture_text):
    recs, st = _ticks(fixture_text, ["kvbm_1.prom", "kvbm_2.prom", "kvbm_3_reset.prom"], 2 * MiB)
    first, second, third = recs
    assert first["raw"] == {} and first["tier2"]["bytes_out"] is None  # baseline tick: no deltas yet
    # deltas: offload d2h 30 (T0->T1), h2d 12 (T1->T2), d2d 2 (T0->T2); onboard h2d 3 (T1->T0), d2d 4 (T2->T0)
    t0, t1, t2 = second["tier0"], second["tier1"], second["tier2"]
    assert t0["bytes_out"] == (30 + 2) * 2 * MiB
    assert t0["bytes_in"] == (3 + 4) * 2 * MiB
    assert t1["bytes_in"] == 30 * 2 * MiB and t1["bytes_out"] == (12 + 3) * 2 * MiB
    assert t2["bytes_in"] == (12 + 2) * 2 * MiB and t2["bytes_out"] == 4 * 2 * MiB
    assert t1["hits"] == 3 and t2["hits"] == 4
    assert second["server"]["matched_tokens"] == 224
    assert second["raw"]["src"]["kvbm_offload_blocks_d2h"] == 30
    assert second["gauges"]["kvbm_disk_cache_hit_rate"] == 0.125
    # the exporter restarted: every counter dropped, deltas are the new values, never negative
    assert third["raw"]["src"] == {"kvbm_offload_blocks_d2h": 7, "kvbm_offload_blocks_h2d": 3,
                                   "kvbm_offload_blocks_d2d": 0, "kvbm_onboard_blocks_h2d": 1,
                                   "kvbm_onboard_blocks_d2d": 2, "kvbm_matched_tokens": 64}
    assert third["tier2"]["hits"] == 2 and third["tier2"]["bytes_out"] == 2 * 2 * MiB
    assert st.resets == 6  # all six counters dropped (offload d2d 2 -> 0 included)


def test_kvbm_without_block_size_keeps_blocks_drops_bytes(fixture_text):
    recs, _ = _ticks(fixture_text, ["kvbm_1.prom", "kvbm_2.prom"], None)
    assert recs[1]["tier2"]["hits"] == 4 and recs[1]["tier2"]["bytes_out"] is None


def test_kvbm_counter_parses_without_total_suffix(fixture_text):
    snap = parse_text(fixture_text("kvbm_1.prom"))
    assert ("kvbm_offload_blocks_d2h", ()) in snap.counters
    assert ("kvbm_host_cache_hit_rate", ()) in snap.gauges


def test_trtllm_prometheus(fixture_text):
    (_, rec), _ = _ticks(fixture_text, ["trtllm_1.prom", "trtllm_2.prom"])
    t0 = rec["tier0"]
    assert (t0["hits"], t0["misses"]) == (30, 10)
    assert (t0["bytes_in"], t0["bytes_out"]) == (2 * MiB, 4 * MiB)
    assert t0["hit_tokens"] == 960
    assert rec["server"]["requests"] == 6  # stop +5, and a new 'length' label set counted whole (1)
    # ttft bucket deltas [0, 10, 8, 2, 0] -> p50 50 ms, p95 300 ms, p99 460 ms; p95 lies in the bucket
    # (100, 500] ms, wider than 300 ms: not reported as a value, only as the bucket it lies in
    assert rec["server"]["ttft_p50_ms"] == pytest.approx(50.0)
    assert rec["server"]["ttft_p95_ms"] is None
    assert rec["bucket_limited"] == {"server.ttft_p95_ms": [pytest.approx(100.0), pytest.approx(500.0)]}
    assert rec["server"]["ttft_p99_ms"] == pytest.approx(460.0)
    assert rec["gauges"]["kv_cache_hit_rate"] == 0.7 and rec["gauges"]["requests_running"] == 4
    assert not any(k.endswith("_created") for k in rec["raw"]["src"])


def test_trtllm_json_iterations_drained_on_read(fixture_text):
    recs, _ = _ticks(fixture_text, ["trtllm_iter_1.json", "trtllm_iter_2.json", "trtllm_iter_3_empty.json"])
    first, second, empty = recs
    assert first["tier0"]["hits"] is None  # baseline of the cumulative kvCacheStats
    assert first["server"]["iter_p50_ms"] == pytest.approx(21.0)
    assert second["tier0"]["hits"] == 122 - 105 and second["tier0"]["misses"] == 318 - 305
    assert second["server"]["iter_p50_ms"] == pytest.approx(35.0)
    assert second["gauges"]["tier0_used_blocks"] == 130 and second["gauges"]["tokens_per_block"] == 32
    # nothing new since the last read: no iterations, no deltas, no crash
    assert empty["tier0"]["hits"] is None and "iter_p50_ms" not in empty["server"]


def test_vllm_reset_and_token_misses(fixture_text):
    (_, rec), st = _ticks(fixture_text, ["vllm_1.prom", "vllm_2_reset.prom"])
    # engine restarted between scrapes: counters count from zero again
    assert rec["tier0"]["hit_tokens"] == 500 and rec["tier0"]["miss_tokens"] == 1500
    assert rec["tier1"]["hit_tokens"] == 300 and rec["tier1"]["miss_tokens"] == 1200
    assert rec["server"]["preemptions"] == 0
    # histogram reset too: the new buckets taken whole, cumulative 0,1,2,4,4
    assert rec["server"]["ttft_p50_ms"] == pytest.approx(100.0)
    assert rec["server"]["ttft_p95_ms"] == pytest.approx(460.0)
    assert rec["server"]["ttft_p99_ms"] == pytest.approx(492.0)
    assert rec["gauges"]["kv_cache_usage"] == 0.5
    assert st.resets >= 4
    assert all(v >= 0 for v in rec["raw"]["src"].values())


def test_sglang(fixture_text):
    (_, rec), _ = _ticks(fixture_text, ["sglang_1.prom", "sglang_2.prom"])
    assert rec["tier0"]["hit_tokens"] == 3000
    assert rec["tier0"]["miss_tokens"] == 1000  # prompt 4000 - cached 3000
    assert rec["server"]["generation_tokens"] == 320
    # ttft deltas cumulative 0 (<=0.1), 4 (<=0.2), 5 (+Inf): p50 rank 2.5 -> 0.1 + 0.1*2.5/4
    assert rec["server"]["ttft_p50_ms"] == pytest.approx(162.5)
    # p99's rank is in the +Inf bucket: all the histogram says is "above 200 ms", so no value
    assert rec["server"]["ttft_p99_ms"] is None
    assert rec["bucket_limited"]["server.ttft_p99_ms"] == [pytest.approx(200.0), float("inf")]
    assert rec["gauges"]["tier1_used_tokens"] == 4096


def test_lmcache(fixture_text):
    (_, rec), _ = _ticks(fixture_text, ["lmcache_1.prom", "lmcache_2.prom"])
    assert rec["tier1"]["hit_tokens"] == 1500 and rec["tier1"]["miss_tokens"] == 500
    # retrieve deltas cumulative 0, 8, 10, 10: p50 rank 5 -> 1 ms + 4 ms * 5/8 = 3.5 ms, inside the
    # bucket (1, 5] ms, which is wider than 3.5 ms: bucket-limited, not a value
    assert rec["tier1"]["fetch_p50_ms"] is None
    assert rec["bucket_limited"]["tier1.fetch_p50_ms"] == [pytest.approx(1.0), pytest.approx(5.0)]
    assert rec["tier1"]["fetch_p99_ms"] == pytest.approx(5.0 + 5.0 * (9.9 - 8) / 2)
    assert rec["server"]["lmcache_stored_tokens"] == 1000


def test_dynamo_frontend(fixture_text):
    (_, rec), _ = _ticks(fixture_text, ["dynamo_frontend_1.prom", "dynamo_frontend_2.prom"])
    assert rec["server"]["requests"] == 10  # success +9, new error series +1
    assert rec["server"]["generation_tokens"] == 320
    assert rec["server"]["cached_tokens"] == 12000
    assert rec["server"]["ttft_p50_ms"] == pytest.approx(50.0)
    assert rec["server"]["ttft_p95_ms"] == pytest.approx(95.0)
    assert rec["gauges"]["tokens_per_block"] == 32 and rec["gauges"]["frontend_active_requests"] == 6


def test_kvsim_ground_truth_per_tier(fixture_text):
    """Names as src/kvharness/sim/exporters.py exports them: per-tier label ``tier``."""
    (_, rec), _ = _ticks(fixture_text, ["kvsim_1.prom", "kvsim_2.prom"], 2 * MiB)
    assert rec["evictions"] == 10                      # tier 0, the device pool
    assert rec["tier0"]["evictions"] == 10 and rec["tier1"]["evictions"] == 2 and rec["tier2"]["evictions"] == 0
    assert rec["sim"]["tier2_file_read_bytes"] == 8 * MiB and rec["sim"]["tier2_file_write_bytes"] == 4 * MiB
    assert rec["sim"]["cached_tokens"] == 1024 and rec["sim"]["preemptions"] == 0
    # tier-2 fetch bucket deltas cumulative 0, 0, 2, 4, 4 over (0.5, 1, 2.5, 5 ms, +Inf)
    assert rec["tier2"]["fetch_p50_ms"] == pytest.approx(2.5)
    assert rec["tier2"]["fetch_p95_ms"] == pytest.approx(4.75)
    assert rec["tier2"]["fetch_p99_ms"] == pytest.approx(4.95)
    assert rec["tier1"]["fetch_p50_ms"] is None  # 4 new samples, all in the first bucket: only "<= 0.5 ms"
    assert rec["bucket_limited"]["tier1.fetch_p50_ms"] == [0.0, pytest.approx(0.5)]
    assert rec["tier0"]["fetch_p50_ms"] is None                 # no tier-0 series
    assert rec["gauges"]["kvsim_speedup"] == 1 and rec["gauges"]["kvsim_tier_blocks{tier=0}"] == 1024


def test_several_sources_sum_and_missing_source_is_none(fixture_text):
    a, b = DeltaState(), DeltaState()
    a.update(parse_body(fixture_text("kvbm_1.prom")))
    b.update(parse_body(fixture_text("trtllm_1.prom")))
    rec = map_deltas({"kvbm": a.update(parse_body(fixture_text("kvbm_2.prom"))),
                      "engine": b.update(parse_body(fixture_text("trtllm_2.prom"))),
                      "down": None}, 2 * MiB)
    # tier0 bytes_in: KVBM onboard (3 + 4 blocks) + TRT-LLM onboard bytes (2 MiB)
    assert rec["tier0"]["bytes_in"] == 7 * 2 * MiB + 2 * MiB
    assert set(rec["raw"]) == {"kvbm", "engine"}


def test_memoised_mapped_only_parse_gives_the_same_record(fixture_text):
    """The collector's per-source SeriesCache(mapped_only=True) must not change any mapped value."""
    from kvharness.telemetry.prom import SeriesCache

    for pair in (("trtllm_1.prom", "trtllm_2.prom"), ("vllm_1.prom", "vllm_2_reset.prom"),
                 ("kvsim_1.prom", "kvsim_2.prom"), ("dynamo_frontend_1.prom", "dynamo_frontend_2.prom"),
                 ("sglang_1.prom", "sglang_2.prom"), ("lmcache_1.prom", "lmcache_2.prom")):
        full, fast = DeltaState(), DeltaState()
        cache = SeriesCache(mapped_only=True)
        recs = []
        for n in pair:
            text = fixture_text(n)
            a = full.update(parse_text(text))
            parse_text(text, cache)  # a warm cache, like every tick after the first
            b = fast.update(parse_text(text, cache))
            recs.append((a, b))
        a, b = recs[1]
        assert map_deltas({"s": a}, 2 * MiB) == map_deltas({"s": b}, 2 * MiB), pair
    snap = parse_text(fixture_text("trtllm_1.prom"), SeriesCache(mapped_only=True))
    assert all(not k[0].endswith("_sum") for k in snap.counters)  # unmapped series skipped


def test_series_changing_type_is_reclassified():
    from kvharness.telemetry.prom import SeriesCache

    cache = SeriesCache()
    s1 = parse_text("# TYPE foo gauge\nfoo 3\n", cache)
    s2 = parse_text("# TYPE foo counter\nfoo 4\n", cache)
    assert ("foo", ()) in s1.gauges and ("foo", ()) in s2.counters
