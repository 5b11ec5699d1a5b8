"""End to end on a live sim-B (issue 5 acceptance): with a working set larger than T0+T1, dynkv.jsonl shows
tier-2 hits and bytes, and the NVMe fields show the simulator's real reads in the same 200 ms windows."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvharness.telemetry.collector import Collector, CollectorConfig

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drive(url: str, stop: threading.Event, seed: int) -> None:
    import httpx

    prompts = [" ".join(f"p{i}w{j}" for j in range(320)) for i in range(24)]  # 10 blocks each
    rnd = random.Random(seed)
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            try:
                c.post(url + "/v1/completions", json={"model": "m", "prompt": rnd.choice(prompts), "max_tokens": 4})
            except httpx.HTTPError:
                time.sleep(0.05)


def test_sim_b_spill_tier2_bytes_and_nvme_reads_in_same_windows(tmp_path):
    port, mport = _free_port(), _free_port()
    tier2 = tmp_path / "tier2"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    sim = subprocess.Popen(
        [sys.executable, "-m", "kvharness", "sim", "--mode", "B", "--port", str(port), "--metrics-port", str(mport),
         "--model-profile", "llama-3.1-8b", "--precision", "fp8", "--hardware", "gb10", "--served-model-name", "m",
         "--tier0-bytes", "64MiB", "--tier1-bytes", "64MiB", "--tier2-bytes", "1GiB", "--tier2-dir", str(tier2),
         "--speedup", "20"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()
    try:
        import httpx

        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert sim.poll() is None, sim.stderr.read().decode()
            assert time.monotonic() < deadline, "sim did not become healthy"
            time.sleep(0.1)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
        drivers = [threading.Thread(target=_drive, args=(f"http://127.0.0.1:{port}", stop, i)) for i in range(3)]
        for d in drivers:
            d.start()
        cfg = CollectorConfig(out_dir=str(tmp_path / "out"), interval_ms=200, tier2_path=str(tier2),
                              scrapes={"frontend": f"http://127.0.0.1:{port}/metrics",
                                       "kvbm": f"http://127.0.0.1:{mport}/metrics"},
                              duration_s=6.0)
        summary = Collector(cfg).run()
    finally:
        stop.set()
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
    out = tmp_path / "out"
    dyn = [json.loads(x) for x in (out / "dynkv.jsonl").read_text().splitlines()]
    sysm = [json.loads(x) for x in (out / "sysmon.jsonl").read_text().splitlines()]
    assert summary["alignment_fraction"] >= 0.9
    assert summary["kv_block_size_bytes"] == health["kv_block_size_bytes"]
    t2_ticks = [d for d in dyn if (d["tier2"]["bytes_out"] or 0) > 0]
    assert t2_ticks, "no tier-2 onboarding seen"
    assert all(d["tier2"]["hits"] > 0 for d in t2_ticks)
    assert any(d["tier2"]["fetch_p99_ms"] is not None for d in t2_ticks)
    if summary["nvme_device"] is None or not health["tiers"]["t2"].get("o_direct"):
        pytest.skip(f"tier-2 dir not on a block device with O_DIRECT ({summary['nvme_device_detail']})")
    by_tick = {s["tick"]: s for s in sysm}
    both = [d for d in t2_ticks if (d.get("sim") or {}).get("tier2_file_read_bytes", 0) > 0
            and (by_tick[d["tick"]]["nvme"] or {}).get("rps", 0) > 0]
    assert len(both) >= 0.8 * len(t2_ticks)
    # the device saw at least the simulator's own tier-2 read bytes over the run
    sim_read = sum((d.get("sim") or {}).get("tier2_file_read_bytes", 0) for d in dyn)
    dev_read = sum((s["nvme"] or {}).get("r_bytes", 0) for s in sysm)
    assert dev_read >= 0.9 * sim_read > 0
