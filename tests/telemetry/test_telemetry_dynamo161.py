"""Mapping fixes found against the upstream exporters of issue 23 (Dynamo 1.6.1 era): expositions written
here in the exporters' shapes (names, label values, bucket boundaries), two scrapes each."""

import pytest

from kvharness.telemetry.prom import DeltaState, map_deltas, parse_body


def _tick(first: str, second: str, sources=("src",)) -> dict:
    st = {s: DeltaState() for s in sources}
    for s in sources:
        assert st[s].update(parse_body(first if len(sources) == 1 else first[s])) is None
    return map_deltas({s: st[s].update(parse_body(second if len(sources) == 1 else second[s])) for s in sources}, None)


def _vllm(store: int, load: int) -> str:
    # vLLM's OffloadingConnector exports the flat counters and, still, the deprecated labelled total
    return (
        "# TYPE vllm:kv_offload_store_bytes counter\n"
        f"vllm:kv_offload_store_bytes_total{{engine=\"0\",model_name=\"m\"}} {store}\n"
        "# TYPE vllm:kv_offload_load_bytes counter\n"
        f"vllm:kv_offload_load_bytes_total{{engine=\"0\",model_name=\"m\"}} {load}\n"
        "# TYPE vllm:kv_offload_total_bytes counter\n"
        f"vllm:kv_offload_total_bytes_total{{engine=\"0\",model_name=\"m\",transfer_type=\"GPU_to_CPU\"}} {store}\n"
        f"vllm:kv_offload_total_bytes_total{{engine=\"0\",model_name=\"m\",transfer_type=\"CPU_to_GPU\"}} {load}\n")


def test_vllm_offload_bytes_counted_once_when_both_series_are_exported():
    rec = _tick(_vllm(0, 0), _vllm(4096, 1024))
    assert rec["tier1"]["bytes_in"] == 4096 and rec["tier0"]["bytes_out"] == 4096   # stored GPU -> CPU
    assert rec["tier1"]["bytes_out"] == 1024 and rec["tier0"]["bytes_in"] == 1024   # loaded CPU -> GPU


def test_vllm_deprecated_total_still_read_alone():
    only_total = lambda s, l: "\n".join(x for x in _vllm(s, l).splitlines() if "total_bytes" in x) + "\n"
    rec = _tick(only_total(0, 0), only_total(4096, 1024))
    assert rec["tier1"]["bytes_in"] == 4096 and rec["tier0"]["bytes_in"] == 1024


def _sglang(device: int, host: int, storage: int) -> str:
    # SGLang labels L3 hits with the storage backend's class: cache_source="storage_<Backend>"
    return ("# TYPE sglang:cached_tokens counter\n"
            f"sglang:cached_tokens_total{{cache_source=\"device\",engine_type=\"unified\"}} {device}\n"
            f"sglang:cached_tokens_total{{cache_source=\"host\",engine_type=\"unified\"}} {host}\n"
            f"sglang:cached_tokens_total{{cache_source=\"storage_HiCacheFile\",engine_type=\"unified\"}} {storage}\n")


def test_sglang_storage_backend_hits_are_tier2():
    rec = _tick(_sglang(0, 0, 0), _sglang(1000, 500, 30))
    assert (rec["tier0"]["hit_tokens"], rec["tier1"]["hit_tokens"], rec["tier2"]["hit_tokens"]) == (1000, 500, 30)


def _duration(counts: list[int]) -> str:
    # dynamo_frontend_request_duration_seconds: buckets 0, 2, 4 ... 510 s (issue 23); counts per bucket
    lines = ["# TYPE dynamo_frontend_request_duration_seconds histogram"]
    cum = 0
    for i, le in enumerate(range(0, 512, 2)):
        cum += counts[i] if i < len(counts) else 0
        lines.append(f'dynamo_frontend_request_duration_seconds_bucket{{le="{le}"}} {cum}')
    lines.append(f'dynamo_frontend_request_duration_seconds_bucket{{le="+Inf"}} {cum}')
    return "\n".join(lines) + "\n"


def test_coarse_histogram_percentile_is_flagged_not_reported():
    # ten requests of ~0.27 s all land in (0, 2] s: interpolation would print p50 1000 ms, p95 1900 ms
    rec = _tick(_duration([]), _duration([0, 10]))
    for q in (50, 95, 99):
        assert rec["server"][f"e2e_p{q}_ms"] is None
        assert rec["bucket_limited"][f"server.e2e_p{q}_ms"] == [0.0, 2000.0]


def test_frontend_queued_requests_is_not_the_engine_waiting_queue():
    # Dynamo's queued_requests: requests without a first response yet (prefill included); the mocker's
    # vllm:num_requests_waiting (worker system port) is the engine's queue
    frontend = "# TYPE dynamo_frontend_queued_requests gauge\ndynamo_frontend_queued_requests 5\n"
    worker = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\"} 2\n"
    rec = _tick({"frontend": frontend, "worker": worker}, {"frontend": frontend, "worker": worker},
                sources=("frontend", "worker"))
    assert rec["gauges"]["frontend_queued_requests"] == 5 and rec["gauges"]["requests_waiting"] == 2
    alone = _tick(frontend, frontend)
    assert alone["gauges"]["frontend_queued_requests"] == 5 and "requests_waiting" not in alone["gauges"]


@pytest.mark.parametrize("width,value,limited", [(0.04, 0.05, False), (0.4, 0.3, True), (0.4, 0.46, False)])
def test_bucket_limited_rule(width, value, limited):
    from kvharness.telemetry.prom import bucket_limited

    assert bucket_limited(value, (value - width / 2, value + width / 2)) is limited
