"""Can one simulator process keep its modelled schedule with 256 concurrent streams?

    python benchmarks/sim_capacity.py [--speedup 20] [--duration 8] [--streams 256]

Runs sim-B (max batch 256, a device pool that holds every stream) under a closed loop of 256 users,
2048-token prompts, 16 output tokens, and reads back from the sim's own ground truth
``kvsim_emission_lag_seconds`` (wall time a token's SSE event was written minus the modelled end of
the step that produced it). Passes when p99 lag < 5 ms and the sim process used < 1 core.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time

import psutil

from sim_common import closed_loop, free_port, pct, scrape, sim_process


def hist_quantile(before: dict, after: dict, name: str, q: float) -> tuple[float, int]:
    """Quantile from the delta of a Prometheus histogram's cumulative buckets (linear within a bucket)."""
    buckets = []
    for k, v in after.items():
        if k.startswith(name + "_bucket{") and 'le="' in k:
            le = k.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, v - before.get(k, 0.0)))
    buckets.sort()
    total = buckets[-1][1]
    if total <= 0:
        return float("nan"), 0
    target = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in buckets:
        if c >= target:
            if b == float("inf"):
                return prev_b, int(total)
            frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return prev_b + (b - prev_b) * frac, int(total)
        prev_b, prev_c = b, c
    return prev_b, int(total)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speedup", type=float, default=20)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--output", type=int, default=16)
    ap.add_argument("--tier1", default="8GiB")
    ap.add_argument("--tier2", default="64GiB")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvsim-cap-") as t2:
        mport = free_port()
        args = ["--mode", "B", "--speedup", str(a.speedup), "--max-batch-size", str(a.streams),
                "--tier0-bytes", "40GiB", "--tier1-bytes", a.tier1, "--tier2-bytes", a.tier2, "--tier2-dir", t2,
                "--metrics-port", str(mport)]
        with sim_process(args) as (base, proc, _):
            p = psutil.Process(proc.pid)
            before = scrape(base + "/metrics")
            cpu0, w0 = sum(p.cpu_times()[:2]), time.perf_counter()
            recs = asyncio.run(closed_loop(base, a.streams, a.duration, a.context, a.output))
            cpu1, w1 = sum(p.cpu_times()[:2]), time.perf_counter()
            after = scrape(base + "/metrics")
    ok = [r for r in recs if r.get("status") == 200 and r.get("ttft")]
    lag99, n = hist_quantile(before, after, "kvsim_emission_lag_seconds", 0.99)
    lag50, _ = hist_quantile(before, after, "kvsim_emission_lag_seconds", 0.50)
    wake99, _ = hist_quantile(before, after, "kvsim_step_wake_lag_seconds", 0.99)
    cores = (cpu1 - cpu0) / (w1 - w0)
    work99, _ = hist_quantile(before, after, "kvsim_step_work_seconds", 0.99)
    late99, _ = hist_quantile(before, after, "kvsim_timer_late_seconds", 0.99)
    tokens = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in ok)
    print(f"sim-B, {a.streams} closed-loop streams, {a.context}-token prompts, {a.output} output tokens, "
          f"speedup {a.speedup:g}, {w1 - w0:.1f} s")
    print(f"  requests ok {len(ok)}/{len(recs)}, tokens {tokens} ({tokens / (w1 - w0):.0f}/s wall), "
          f"TTFT p50 {pct([r['ttft'] for r in ok], 50) * 1e3:.0f} ms")
    print(f"  emission lag (actual - modelled) over {n} tokens: p50 {lag50 * 1e3:.2f} ms, p99 {lag99 * 1e3:.2f} ms "
          f"(limit 5 ms); step wake-up lag p99 {wake99 * 1e3:.2f} ms")
    print(f"  sim CPU: {cores:.2f} cores (limit 1.0); engine work per step p99 {work99 * 1e3:.2f} ms; "
          f"loop timer lateness p99 {late99 * 1e3:.2f} ms")
    passed = lag99 < 0.005 and cores < 1.0 and len(ok) == len(recs) and n > 0
    print("capacity:", "OK" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
