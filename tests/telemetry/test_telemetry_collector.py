"""Collector: absolute-time cadence, missed ticks never bunched, alignment, outputs, CLI and signals."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvharness.telemetry.collector import Collector, CollectorConfig, alignment_fraction, build_summary
from tm_fakeserver import FakeMetrics

FIX = Path(__file__).parent / "fixtures"


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


class SlowGpu:
    """A GPU source whose third sample stalls for ``stall_s`` (a late tick) and that counts its calls."""

    available = True
    reason = None
    unsupported: dict = {}

    def __init__(self, stall_s: float):
        self.calls = 0
        self.stall_s = stall_s

    def sample(self):
        self.calls += 1
        if self.calls == 3:
            time.sleep(self.stall_s)
        return [{"index": 0, "util_pct": 1}]

    def close(self):
        pass


def test_short_run_with_scrape_writes_every_output(tmp_path):
    bodies = [(FIX / n).read_text() for n in ("kvbm_1.prom", "kvbm_2.prom", "kvbm_3_reset.prom")]
    with FakeMetrics(bodies) as fm:
        cfg = CollectorConfig(out_dir=str(tmp_path), interval_ms=100, tier2_path=str(tmp_path),
                              scrapes={"kvbm": fm.url}, kv_block_bytes=2 << 20, duration_s=1.0,
                              watch_tree=os.getpid())
        s = Collector(cfg).run()
    sysmon = _lines(tmp_path / "sysmon.jsonl")
    dyn = _lines(tmp_path / "dynkv.jsonl")
    assert s["ticks_expected"] == 10 and s["ticks_present"] + s["ticks_missed"] == 10
    # dynkv has the baseline scrape at tick 0 (taken at once, so a cell's load need not wait an interval)
    assert len(sysmon) == len(dyn) - 1 == s["ticks_present"] >= 9
    assert [0] + [r["tick"] for r in sysmon] == [r["tick"] for r in dyn]
    first = sysmon[0]
    assert {"ts", "mono_ns", "cpu", "mem", "gpu", "nvme", "procs"} <= set(first)
    assert set(first["cpu"]) >= {"user", "system", "iowait"}
    assert set(first["mem"]) >= {"MemAvailable", "Cached", "swap_used"}
    if s["nvme_device"]:
        assert set(first["nvme"]) >= {"device", "rps", "rMBs", "wps", "wMBs", "r_await_ms", "w_await_ms",
                                      "aqu_sz", "util_pct"}
    if first["gpu"] is None:
        assert first.get("gpu_reason") and "gpu_reason" not in sysmon[1]  # once
    assert dyn[0]["baseline"] == ["kvbm"] and dyn[1]["tier2"]["hits"] == 4
    assert dyn[0]["baseline_hits"] > 0 and "baseline_hits" not in dyn[1]  # this fixture's stack is not fresh
    assert dyn[2]["raw"]["kvbm"]["kvbm_offload_blocks_d2h"] == 7  # reset handled
    assert dyn[1]["kv_block_size_bytes"] == 2 << 20
    for r in dyn:
        assert {"tier0", "tier1", "tier2", "evictions", "prefetches"} <= set(r)
        assert {"hits", "misses", "bytes_in", "bytes_out", "fetch_p50_ms", "fetch_p95_ms",
                "fetch_p99_ms"} <= set(r["tier0"])
    rows = list(csv.DictReader(open(tmp_path / "dynkv_kv.csv")))
    assert len(rows) == len(dyn) and rows[1]["tier2_bytes_out"] == str(4 * (2 << 20))
    raw = [json.loads(x) for x in gzip.open(tmp_path / "scrapes.jsonl.gz", "rt")]
    assert raw[0]["body"].startswith("# HELP kvbm") and len(raw) == len(dyn)
    assert s["source_samples"]["kvbm"] == len(dyn) - 1 and s["alignment_fraction"] >= 0.9
    assert s["interval_achieved_median_ms"] == pytest.approx(100.0, rel=0.02)
    assert s["collector_cpu_s"] >= 0
    assert json.loads((tmp_path / "collector_summary.json").read_text())["ticks_expected"] == 10


def test_failed_scrape_is_a_missing_sample_not_a_crash(tmp_path):
    cfg = CollectorConfig(out_dir=str(tmp_path), interval_ms=100, scrapes={"down": "http://127.0.0.1:9/metrics"},
                          duration_s=0.5)
    s = Collector(cfg).run()
    assert s["ticks_present"] >= 4 and s["source_samples"]["down"] == 0
    assert s["alignment_fraction"] == 0.0 and s["scrape_errors"]["down"] == s["ticks_present"] + 1  # + the baseline try
    dyn = _lines(tmp_path / "dynkv.jsonl")
    assert dyn[0]["sources"]["down"]["ok"] is False and dyn[0]["tier2"]["hits"] is None


def test_late_tick_is_missed_not_bunched(tmp_path):
    gpu = SlowGpu(stall_s=0.35)
    cfg = CollectorConfig(out_dir=str(tmp_path), interval_ms=100, duration_s=1.2, gpu=gpu)
    s = Collector(cfg).run()
    recs = _lines(tmp_path / "sysmon.jsonl")
    ticks = [r["tick"] for r in recs]
    assert s["ticks_expected"] == 12
    assert s["ticks_missed"] >= 2 and s["ticks_present"] + s["ticks_missed"] == 12
    assert len(set(ticks)) == len(ticks) and ticks == sorted(ticks)
    # every sample sits near its own due time: no tick was taken late or two ticks back to back
    assert all(r["lag_ms"] <= 25 for r in recs)  # late window = a quarter interval
    gaps = [(b["mono_ns"] - a["mono_ns"]) / 1e6 for a, b in zip(recs, recs[1:])]
    assert min(gaps) > 50
    assert s["alignment_fraction"] == pytest.approx(s["ticks_present"] / 12)


def test_alignment_fraction_and_summary_math():
    assert alignment_fraction(95, 100) == 0.95
    assert alignment_fraction(0, 0) is None
    assert alignment_fraction(12, 10) == 1.0
    s = build_summary(interval_ms=200, expected=5, present=4, missed_counted=1,
                      sample_ns=[0, 200_000_000, 400_000_000, 800_000_000], lags_ms=[0.1] * 4,
                      counts={"host": 4, "kv": 3}, sources=["host", "kv"], aligned=3, cpu_s=0.01, wall_s=1.0)
    assert s["ticks_missed"] == 1 and s["ticks_present_fraction"] == 0.8
    assert s["interval_achieved_median_ms"] == 200.0
    assert s["interval_achieved_p99_ms"] == pytest.approx(200 + 200 * 0.98)
    assert s["alignment_fraction"] == 0.6 and s["collector_cpu_pct_of_core"] == 1.0


def test_stop_event_ends_run_promptly(tmp_path):
    stop = threading.Event()
    c = Collector(CollectorConfig(out_dir=str(tmp_path), interval_ms=5000), stop)
    threading.Timer(0.3, stop.set).start()
    t = time.monotonic()
    s = c.run()
    assert time.monotonic() - t < 2.0 and s["ticks_expected"] == 0
    assert (tmp_path / "collector_summary.json").exists()


def test_stop_takes_a_closing_scrape_so_the_last_counts_are_kept(tmp_path):
    """The cell stops the collector when the load ends: what the counters moved since the last regular
    tick (here: no regular tick at all) is still written, as one record marked final."""
    bodies = [(FIX / n).read_text() for n in ("kvbm_1.prom", "kvbm_2.prom")]
    stop = threading.Event()
    with FakeMetrics(bodies) as fm:
        cfg = CollectorConfig(out_dir=str(tmp_path), interval_ms=5000, scrapes={"kvbm": fm.url}, kv_block_bytes=2 << 20)
        threading.Timer(0.3, stop.set).start()
        s = Collector(cfg, stop).run()
    dyn = _lines(tmp_path / "dynkv.jsonl")
    assert [r["tick"] for r in dyn] == [0, 1] and dyn[0]["baseline"] == ["kvbm"]
    assert dyn[1]["final"] is True and dyn[1]["tier2"]["hits"] == 4 and "final" not in dyn[0]
    assert s["ticks_expected"] == 0 and s["ticks_present"] == 0  # the closing scrape is no tick
    assert len(list(csv.DictReader(open(tmp_path / "dynkv_kv.csv")))) == 2


def test_cli_runs_until_sigterm(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    p = subprocess.Popen([sys.executable, "-m", "kvharness", "sysmon", "--out-dir", str(tmp_path / "o"),
                          "--interval-ms", "100", "--tier2-path", str(tmp_path), "--watch-tree", str(os.getpid())],
                         env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (tmp_path / "o" / "sysmon.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.6)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    s = json.loads((tmp_path / "o" / "collector_summary.json").read_text())
    assert s["ticks_present"] >= 4 and s["ticks_missed"] == 0
    assert len((tmp_path / "o" / "sysmon.jsonl").read_text().splitlines()) == s["ticks_present"]


def test_cli_rejects_reserved_and_bad_scrape_names(tmp_path):
    from kvharness.cli import main

    assert main(["sysmon", "--out-dir", str(tmp_path), "--scrape", "host=http://x/metrics"]) == 2
    with pytest.raises(SystemExit):
        main(["sysmon", "--out-dir", str(tmp_path), "--scrape", "nourl"])
