"""Spill behaviour of the simulated stacks: tier-2 traffic vs context, A vs B, and fio interference.

    python benchmarks/sim_spill.py                 # context sweep, comfy and spill profiles, A and B
    python benchmarks/sim_spill.py --fio-only      # background fio on/off in the tier-2 directory

Workload: closed loop, each user resends its own fixed prompt (a per-user nonce at the start), so
requests reuse their prefix and the working set (users x context x KV bytes/token) decides where the
hits come from. Reports the sim's own ground truth: tier-2 bytes written/read (real file I/O),
kvbm onboard counters, tier-2 fetch latency, and (mode A) preemptions and tier-2 files (must be none).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

from sim_common import closed_loop, free_port, pct, scrape, sim_process

PROFILES = {  # SPEC v3.3 defaults (T0, T1, T2)
    "comfy": ("8GiB", "8GiB", "256GiB"),
    "spill": ("2GiB", "4GiB", "64GiB"),
}


def run_cell(mode: str, profile: str, context: int, users: int, duration: float, speedup: float, fio: bool = False):
    t0, t1, t2 = PROFILES[profile]
    tmp = tempfile.mkdtemp(prefix="kvsim-spill-")
    mport = free_port()
    args = ["--mode", mode, "--speedup", str(speedup), "--tier0-bytes", t0, "--max-batch-size", "64",
            "--tier2-dir", tmp]
    if mode == "B":
        args += ["--tier1-bytes", t1, "--tier2-bytes", t2, "--metrics-port", str(mport)]
    fio_proc = None
    try:
        with sim_process(args) as (base, _proc, _):
            if fio:
                fio_proc = subprocess.Popen(
                    ["fio", "--name=bg", f"--directory={tmp}", "--rw=randrw", "--rwmixread=70", "--bs=16k",
                     "--iodepth=32", "--numjobs=4", "--size=256M", "--ioengine=libaio", "--direct=1",
                     "--time_based", f"--runtime={int(duration * 3) + 30}", "--group_reporting"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            asyncio.run(closed_loop(base, users, duration / 2, context, 8, reuse=True))  # warm the working set
            before = scrape(base + "/metrics")
            recs = asyncio.run(closed_loop(base, users, duration, context, 8, reuse=True))
            m = scrape(base + "/metrics")
            k = scrape(f"http://127.0.0.1:{mport}/metrics") if mode == "B" else {}
            files = [f for f in os.listdir(tmp) if f.startswith("kvsim")]
    finally:
        if fio_proc is not None:
            fio_proc.terminate()
            fio_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def d(key):
        return m.get(key, 0.0) - before.get(key, 0.0)

    t = [r["ttft"] for r in recs if r.get("ttft")]
    fetch_n = d('kvsim_tier_fetch_seconds_count{tier="2"}')
    io_n = d("kvsim_tier2_read_io_seconds_count")
    return {
        "mode": mode, "profile": profile, "context": context, "users": users, "n": len(t),
        "ttft_p50_ms": pct(t, 50) * 1e3, "ttft_p99_ms": pct(t, 99) * 1e3,
        "t2_read_MiB": d("kvsim_tier2_read_bytes_total") / 2**20, "t2_write_MiB": d("kvsim_tier2_write_bytes_total") / 2**20,
        "onboard_d2d": k.get("kvbm_onboard_blocks_d2d", 0.0), "onboard_h2d": k.get("kvbm_onboard_blocks_h2d", 0.0),
        "t2_fetch_mean_ms": d('kvsim_tier_fetch_seconds_sum{tier="2"}') / fetch_n * 1e3 if fetch_n else float("nan"),
        "t2_read_io_mean_ms": d("kvsim_tier2_read_io_seconds_sum") / io_n * 1e3 if io_n else float("nan"),
        "preemptions": m.get("kvsim_preemptions_total", 0.0), "tier2_files": len(files),
    }


def show(r: dict) -> None:
    print(f"sim-{r['mode']} {r['profile']:5s} ctx {r['context']:5d} users {r['users']:3d}  n {r['n']:4d}  "
          f"TTFT p50 {r['ttft_p50_ms']:7.1f} p99 {r['ttft_p99_ms']:7.1f} ms  T2 read {r['t2_read_MiB']:7.1f} MiB "
          f"write {r['t2_write_MiB']:7.1f} MiB  onboard d2d {r['onboard_d2d']:6.0f} h2d {r['onboard_h2d']:6.0f}  "
          f"T2 fetch {r['t2_fetch_mean_ms']:6.2f} ms (read I/O {r['t2_read_io_mean_ms']:6.2f} ms)  "
          f"preempt {r['preemptions']:4.0f}  files {r['tier2_files']}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speedup", type=float, default=20)
    ap.add_argument("--users", type=int, default=24)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--contexts", default="1024,2048,4096")
    ap.add_argument("--fio-only", action="store_true")
    a = ap.parse_args()
    ok = True
    if not a.fio_only:
        for profile in ("comfy", "spill"):
            reads = []
            for ctx in [int(x) for x in a.contexts.split(",")]:
                rb = run_cell("B", profile, ctx, a.users, a.duration, a.speedup)
                show(rb)
                reads.append(rb["t2_read_MiB"])
                if profile == "spill":
                    ra = run_cell("A", profile, ctx, a.users, a.duration, a.speedup)
                    show(ra)
                    ok &= ra["tier2_files"] == 0
            if profile == "spill":
                ok &= reads[-1] > 0 and reads == sorted(reads)
            else:
                ok &= reads[0] == 0
    if shutil.which("fio"):
        quiet = run_cell("B", "spill", 4096, a.users, a.duration, a.speedup)
        noisy = run_cell("B", "spill", 4096, a.users, a.duration, a.speedup, fio=True)
        show(quiet)
        show(noisy)
        ratio = noisy["t2_read_io_mean_ms"] / quiet["t2_read_io_mean_ms"]
        print(f"background fio: tier-2 read I/O mean x{ratio:.2f}, fetch mean "
              f"{quiet['t2_fetch_mean_ms']:.2f} -> {noisy['t2_fetch_mean_ms']:.2f} ms")
        ok &= ratio > 1.0
    else:
        print("fio not installed: interference check skipped")
    print("spill:", "OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
