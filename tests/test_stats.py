"""The one definition of each metric, with exact expected values."""

import pytest

from kvharness.stats import pct_delta, percentile, summarize_requests, tpot_ms
from kvharness.units import format_bytes, parse_bytes


def test_percentile_linear_interpolation():
    data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert percentile(data, 50) == 5.5
    assert percentile(data, 99) == pytest.approx(9.91)
    assert percentile(data, 0) == 1 and percentile(data, 100) == 10
    assert percentile([], 50) is None
    assert percentile([7], 99) == 7
    with pytest.raises(ValueError):
        percentile(data, 101)


def test_tpot_definition():
    assert tpot_ms(e2e_ms=250.0, ttft_ms=50.0, output_tokens=21) == 10.0
    assert tpot_ms(100.0, 50.0, 1) is None


def _rec(ttft, e2e, out, rc=0, error_class=None, sched=0, end=1_000_000_000, prompt=100, cached=0):
    return {"lat_ttft_ms": ttft, "lat_e2e_ms": e2e, "lat_tpot_ms": tpot_ms(e2e, ttft, out), "output_tokens": out,
            "rc": rc, "error_class": error_class, "sched_ns": sched, "end_ns": end, "itl_ms": [10.0] * (out - 1),
            "prompt_tokens": prompt, "cached_tokens": cached}


def test_summary_counts_errors_goodput_and_rates():
    recs = [_rec(50, 200, 16), _rec(150, 300, 16, cached=50), _rec(None, None, 0, rc=500, error_class="http_500")]
    recs[2]["itl_ms"] = []
    s = summarize_requests(recs, duration_s=2.0, slo={"ttft_ms": 100})
    assert s["n_requests"] == 3 and s["n_ok"] == 2 and s["n_errors"] == 1
    assert s["error_rate"] == pytest.approx(1 / 3)
    assert s["error_classes"] == {"http_500": 1}
    assert s["req_s"] == 1.0
    assert s["output_tok_s"] == 16.0
    assert s["ttft_ms_p50"] == 100.0
    assert s["goodput_req_s"] == 0.5  # only the 50 ms request meets TTFT <= 100 ms
    assert s["good_fraction"] == pytest.approx(1 / 3)
    assert s["kv_hit_pct"] == 25.0
    assert s["itl_ms_p99"] == 10.0


def test_summary_duration_from_timestamps():
    s = summarize_requests([_rec(10, 20, 2, sched=0, end=500_000_000), _rec(10, 20, 2, sched=100, end=2_000_000_000)])
    assert s["duration_s"] == 2.0
    assert s["req_s"] == 1.0


def test_pct_delta():
    assert pct_delta(110, 100) == pytest.approx(10.0)
    assert pct_delta(None, 100) is None and pct_delta(1, 0) is None


@pytest.mark.parametrize("text,expected", [("64KiB", 65536), ("8 GiB", 8 * 2**30), ("1.5GB", 1_500_000_000), (4096, 4096), ("512MiB", 512 * 2**20)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["4 GBB", "-1GiB", "lots", "", True, -5, "GiB"])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError, match="expected"):
        parse_bytes(bad, "profiles.spill.tier0")


def test_format_bytes():
    assert format_bytes(8 * 2**30) == "8 GiB"
    assert format_bytes(1536) == "1.5 KiB"
