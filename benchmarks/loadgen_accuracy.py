"""Timing accuracy of `kvharness loadgen` against a reference server that records the truth.

    python benchmarks/loadgen_accuracy.py [--duration-s 5]

The raw-asyncio reference server (pinned to one core) streams 16 text events with TTFT 50 ms and ITL
10 ms and records, per request, when the request was complete and when it wrote each event (the
truth: first write - receipt = TTFT, gaps between writes = ITL). Our generator runs pinned to the
other core.

Closed loop at concurrency 1, 64, 256 — pass: reported TTFT mean within 1.5 ms of the truth at every
level, p99 within 3 ms at <= 64 and 15 ms at 256; ITL p99 within 1 ms. Open-loop Poisson at 50, 200,
500 req/s — pass: the schedule's arrivals inside the 99 % Poisson band of the target, achieved send
rate within 1 % of the schedule's rate, schedule lag p99 < 2 ms and
TTFT mean within 1 ms of the truth, or the run is flagged client-bound. Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

from loadgen_common import RefServer, read_truth, run_loadgen
from machine import load_average

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from kvharness.stats import mean, percentile

TTFT_MS, ITL_MS, TOKENS = 50.0, 10.0, 16


def truth_stats(truth: list[dict]) -> dict:
    ttft = [(t["writes"][0] - t["recv_ns"]) / 1e6 for t in truth if t["writes"]]
    itl = [(w[i] - w[i - 1]) / 1e6 for t in truth for w in [t["writes"]] for i in range(1, len(w))]
    return {"ttft_mean": mean(ttft), "ttft_p99": percentile(ttft, 99), "itl_p99": percentile(itl, 99), "n": len(ttft)}


def measure(pattern: dict, duration_s: float, timestamps: str = "loop") -> tuple[dict, dict, list[dict]]:
    tmp = tempfile.mkdtemp(prefix="loadgen-acc-")
    truth_path = os.path.join(tmp, "truth.jsonl")
    with RefServer(tokens=TOKENS, ttft_ms=TTFT_MS, itl_ms=ITL_MS, truth=truth_path) as server:
        spec = {"base_url": server.base_url, "model": "bench", "pattern": pattern,
                "workload": {"kind": "fixed_context", "context_tokens": 32, "output_tokens": TOKENS},
                "duration_s": duration_s, "seed": 1, "timestamps": timestamps}
        summary, records = run_loadgen(spec, tmp, server)
    return summary, truth_stats(read_truth(truth_path)), records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--timestamps", choices=("loop", "kernel"), default="kernel",
                    help="the generator's read stamps: kernel SO_TIMESTAMPNS (the generator's default) or event loop")
    args = ap.parse_args()
    failures = []
    print(f"reference server: TTFT {TTFT_MS} ms, ITL {ITL_MS} ms, {TOKENS} tokens; {args.duration_s} s per run; "
          f"timestamps {args.timestamps}; "
          f"{load_average()}")
    print("'other load' = CPU the client's core gave to OTHER processes during the run; timing is only trustworthy "
          "when it is near 0; 'srv' = the same on the server's core (a disturbed server writes in bursts); "
          "'steal' = CPU time the hypervisor took from this VM (tails measured during steal are the host's)")
    print(f"{'closed loop':14s} {'n':>6s} {'TTFT mean':>10s} {'truth':>8s} {'d':>6s} {'TTFT p99':>9s} {'truth':>8s} "
          f"{'d':>6s} {'ITL p99':>8s} {'truth':>7s} {'d':>6s} {'client-bound':>12s} {'other load':>10s} {'srv':>5s} "
          f"{'steal':>6s}")
    for c in (1, 64, 256):
        s, t, _ = measure({"kind": "closed", "concurrency": c}, args.duration_s, args.timestamps)
        d_mean = s["ttft_ms_mean"] - t["ttft_mean"]
        d_p99 = s["ttft_ms_p99"] - t["ttft_p99"]
        d_itl = s["itl_ms_p99"] - t["itl_p99"]
        print(f"{'c=' + str(c):14s} {s['n_ok']:>6d} {s['ttft_ms_mean']:>10.2f} {t['ttft_mean']:>8.2f} {d_mean:>6.2f} "
              f"{s['ttft_ms_p99']:>9.2f} {t['ttft_p99']:>8.2f} {d_p99:>6.2f} {s['itl_ms_p99']:>8.2f} "
              f"{t['itl_p99']:>7.2f} {d_itl:>6.2f} {str(s['client_bound']):>12s} "
              f"{s['bench_other_load_pct']:>9.0f}% {s['bench_server_other_load_pct']:>4.0f}% {s['bench_steal_pct']:>5.1f}%")
        p99_limit = 3.0 if c <= 64 else 15.0
        if abs(d_mean) > 1.5:
            failures.append(f"c={c}: TTFT mean off by {d_mean:.2f} ms (> 1.5)")
        if abs(d_p99) > p99_limit:
            failures.append(f"c={c}: TTFT p99 off by {d_p99:.2f} ms (> {p99_limit})")
        if abs(d_itl) > 1.0:
            failures.append(f"c={c}: ITL p99 off by {d_itl:.2f} ms (> 1)")
        if s["n_errors"]:
            failures.append(f"c={c}: {s['n_errors']} errors")
    print(f"{'poisson':14s} {'n':>6s} {'target':>8s} {'sched':>8s} {'sent':>8s} {'err %':>6s} {'lag p99':>8s} "
          f"{'TTFT mean':>10s} {'truth':>8s} {'d':>6s} {'client-bound':>12s} {'other load':>10s} {'srv':>5s} {'steal':>6s}")
    for rate in (50, 200, 500):
        s, t, recs = measure({"kind": "poisson", "rate": float(rate)}, args.duration_s, args.timestamps)
        sched = sorted(r["sched_ns"] for r in recs)
        sched_rate = (len(sched) - 1) / ((sched[-1] - sched[0]) / 1e9)
        # The schedule is a Poisson sample: its count in T s is Poisson(rate*T), so a realized rate off
        # the target by sampling noise is expected; check it lies in the 99 % band, and that the
        # generator then SENT at the schedule's rate (the part the generator controls).
        expected = rate * args.duration_s
        in_band = abs(len(sched) - expected) <= 2.576 * math.sqrt(expected) + 1
        sent_rate = s["achieved_send_rate"]
        rate_err = 100.0 * (sent_rate - sched_rate) / sched_rate
        lag = s["send_lag_ms_p99"]
        d_mean = s["ttft_ms_mean"] - t["ttft_mean"]
        print(f"{str(rate) + ' req/s':14s} {s['n_ok']:>6d} {rate:>8.1f} {sched_rate:>8.1f} {sent_rate:>8.1f} "
              f"{rate_err:>6.2f} {lag:>8.3f} {s['ttft_ms_mean']:>10.2f} {t['ttft_mean']:>8.2f} {d_mean:>6.2f} "
              f"{str(s['client_bound']):>12s} {s['bench_other_load_pct']:>9.0f}% "
              f"{s['bench_server_other_load_pct']:>4.0f}% {s['bench_steal_pct']:>5.1f}%")
        if not in_band:
            failures.append(f"poisson {rate}: {len(sched)} arrivals in {args.duration_s} s is outside the 99 % "
                            f"Poisson band around {expected:.0f}")
        if not s["client_bound"]:
            if abs(rate_err) > 1.0:
                failures.append(f"poisson {rate}: send rate off by {rate_err:.2f} % (> 1)")
            if lag >= 2.0:
                failures.append(f"poisson {rate}: schedule lag p99 {lag:.3f} ms (>= 2)")
            if abs(d_mean) > 1.0:
                failures.append(f"poisson {rate}: TTFT mean off by {d_mean:.2f} ms (> 1)")
    print("peers at c=256 (issue 4): TTFT mean/p99 vLLM 113/230, GuideLLM 84/241, AIPerf 136/303 ms vs truth 50.2/51.1")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS: every level within its tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
