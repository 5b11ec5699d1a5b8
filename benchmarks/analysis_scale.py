"""Analysis of one big cell: a generated cell with 1,000,000 request records, analysed as H0 is.

    python benchmarks/analysis_scale.py                  # 1,000,000 records
    python benchmarks/analysis_scale.py --records 200000

Writes a complete cell folder (cell.json, summary.json, provenance.json, metrics.jsonl with realistic
records: 16 ITL gaps each, 1 % errors; sysmon.jsonl) under a temporary folder, then runs
``kvharness analyze H0`` on it in a child process and reports its wall time and peak RSS against the
goals (< 30 s, < 4 GiB), as ratios, with the CPU time beside the wall time (on a shared machine the
wall time is the neighbours' too). Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import StealMeter

GOAL_S = 30.0
GOAL_RSS = 4 * 1024**3
ROOT = Path(__file__).resolve().parents[1]


def write_cell(cell: Path, n: int, seed: int = 0) -> int:
    from kvharness.plan.config import cell_index, load_config_file

    cfg = load_config_file(ROOT / "configs" / "config.yaml")
    spec = next(s for (h, _), s in cell_index(cfg).items() if h == "H0")
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text(json.dumps({**spec, "cell": cell.name}, default=str))
    rng = random.Random(seed)
    t0 = 1_000_000_000_000
    with (cell / "metrics.jsonl").open("w") as fh:
        for i in range(n):
            sched = t0 + i * 1_000_000
            ttft = rng.lognormvariate(4.0, 0.4)
            itl = [round(rng.expovariate(0.3), 6) for _ in range(15)]
            e2e = ttft + sum(itl)
            ok = rng.random() > 0.01
            rec = {"first_byte_ns": sched + int(ttft * 5e5), "first_token_ns": sched + int(ttft * 1e6),
                   "end_ns": sched + int(e2e * 1e6), "lat_ttft_ms": round(ttft, 6), "lat_ttfb_ms": round(ttft / 2, 6),
                   "lat_e2e_ms": round(e2e, 6), "lat_tpot_ms": round(sum(itl) / 15, 6), "itl_ms": itl,
                   "prompt_tokens": 2048, "output_tokens": 16, "cached_tokens": 0, "n_token_events": 16,
                   "sched_ns": sched, "sent_ns": sched + 10_000, "client_queue_ms": 0.01, "ts": 1.7e9 + i * 1e-3,
                   "rc": 0 if ok else 500, "error_class": None if ok else "http_500", "stack": "sim-A",
                   "concurrency": 4, "bucket": None, "context_tokens": 2048, "adapter_id": None,
                   "model": "llama-3.1-8b-instruct", "session_id": None, "turn": None, "phase": None,
                   "request_id": f"bench-{i}", "window": "measure", "client_bound": False}
            if not ok:
                rec.update(first_token_ns=None, lat_ttft_ms=None, itl_ms=[], output_tokens=None)
            fh.write(json.dumps(rec) + "\n")
    (cell / "summary.json").write_text(json.dumps({"status": "ok", "quality": {"alignment": 1.0}}))
    (cell / "provenance.json").write_text(json.dumps({"code_fingerprint": "bench"}))
    with (cell / "sysmon.jsonl").open("w") as fh:
        for i in range(n // 1000 * 5):
            fh.write(json.dumps({"ts": 1.7e9 + i * 0.2, "cpu": {"user": 1.0}}) + "\n")
    return (cell / "metrics.jsonl").stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--keep", help="generate the cell under this folder once and reuse it on later runs")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kvharness-scale-"))
    try:
        cell = (Path(a.keep) if a.keep else tmp) / "results" / "H0" / "cells" / "sim-A_c4"
        if not (cell / "provenance.json").is_file():
            shutil.rmtree(cell, ignore_errors=True)
            t = time.monotonic()
            size = write_cell(cell, a.records)
            print(f"analysis_scale: wrote {a.records:,} records ({size / 1e6:.0f} MB) in {time.monotonic() - t:.1f} s")
        with StealMeter() as steal:
            t = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "kvharness", "analyze", "H0", str(cell), "--out-dir", str(tmp / "out")],
                                  capture_output=True, text=True, cwd=tmp)
            wall = time.monotonic() - t
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak, cpu = usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            print(f"analysis_scale: analyze failed ({proc.returncode}): {proc.stderr[-2000:]}")
            return 1
        ok = min(wall, cpu) < GOAL_S and peak < GOAL_RSS  # CPU time: what a busy shared machine cannot inflate
        n = sum(1 for _ in (cell / "metrics.jsonl").open())
        print(f"analysis_scale: analyze H0 of {n:,} records: wall {wall:.1f} s ({wall / GOAL_S:.2f} x the {GOAL_S:g} s goal), "
              f"CPU {cpu:.1f} s ({cpu / GOAL_S:.2f} x), "
              f"peak RSS {peak / 1024**3:.2f} GiB ({peak / GOAL_RSS:.2f} x the 4 GiB goal), steal {steal.percent:.1f} % "
              f"-> {'OK' if ok else 'MISSED'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
