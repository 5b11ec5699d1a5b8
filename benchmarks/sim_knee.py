"""Closed-loop concurrency sweep against sim-A and sim-B: does p99/p50 TTFT show a queueing knee?

    python benchmarks/sim_knee.py --speedup 20 --max-batch-size 64 --duration 4

Prints, per stack and concurrency, p50/p99 TTFT, p99/p50, completed requests and the sim's CPU time;
the knee (first of two consecutive steps with p99 > 2 x p50) and U_work (highest stable step below it).

With the calibrated GB10 8B-fp8 profile a 2k prompt costs 256 ms of prefill, so the loop is
prefill-bound early: with 16 output tokens and --max-num-tokens 8192 the knee sits at c = 8-16;
with 32 output tokens and --max-num-tokens 16384 at c = 32 (U_work 16) for both stacks.
Exits non-zero when a stack shows no knee (ratio never > 2) or no stable start (ratio at c=1 > 2).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile

import psutil

from sim_common import closed_loop, pct, sim_process


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speedup", type=float, default=20)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-num-tokens", type=int, default=8192)
    ap.add_argument("--tier0-bytes", default="8GiB")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--output", type=int, default=16)
    ap.add_argument("--jitter", type=float, default=0.0)
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64,96,128,160,192,224,256")
    ap.add_argument("--modes", default="A,B")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    ok = True
    for mode in a.modes.split(","):
        tmpdir = tempfile.TemporaryDirectory(prefix="kvsim-knee-")
        tmp = tmpdir.name
        args = ["--mode", mode, "--speedup", str(a.speedup), "--max-batch-size", str(a.max_batch_size),
                "--max-num-tokens", str(a.max_num_tokens), "--tier0-bytes", a.tier0_bytes, "--jitter", str(a.jitter)]
        if mode == "B":
            args += ["--tier2-dir", tmp, "--metrics-port", "0"]
        rows = []
        for c in levels:
            with sim_process(args) as (base, proc, _):
                p = psutil.Process(proc.pid)
                cpu0 = sum(p.cpu_times()[:2])
                recs = asyncio.run(closed_loop(base, c, a.duration, a.context, a.output))
                cpu = sum(p.cpu_times()[:2]) - cpu0
            t = [r["ttft"] for r in recs if r.get("ttft")]
            errs = sum(1 for r in recs if r.get("status") != 200)
            p50, p99 = pct(t, 50), pct(t, 99)
            rows.append((c, p50, p99, p99 / p50 if p50 else float("nan"), len(t), errs, cpu))
            print(f"sim-{mode} c={c:4d}  p50 {p50*1e3:8.1f} ms  p99 {p99*1e3:8.1f} ms  p99/p50 {p99/p50:5.2f}  "
                  f"n={len(t):5d} err={errs} sim_cpu={cpu:5.2f}s", flush=True)
        stable = [r[3] <= 2 for r in rows]
        # knee = first of two consecutive unstable steps; U_work = highest stable step below it (a
        # saturated closed loop equalises waits, so stable steps above the knee do not count)
        knee = next((i for i in range(len(rows) - 1) if not stable[i] and not stable[i + 1]), None)
        below = rows[:knee] if knee is not None else rows
        uwork = next((r[0] for i, r in reversed(list(enumerate(below))) if stable[i]), None)
        print(f"sim-{mode}: knee at c={rows[knee][0] if knee is not None else None}, U_work = {uwork}; "
              f"max p99/p50 = {max(r[3] for r in rows):.2f}")
        if rows[0][3] > 2 or max(r[3] for r in rows) <= 2:
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
