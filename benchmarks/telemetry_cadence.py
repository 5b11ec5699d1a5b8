#!/usr/bin/env python3
"""Cadence benchmark of the collector (issue 5 acceptance).

Runs ``python -m kvharness sysmon`` as its own process (as a cell does) for 60 s at 200 ms, then checks
what it wrote: achieved interval median within 1 % of the target, p99 within 10 %, ticks present >= 99 %,
collector CPU < 1 % of one core (the collector's own CPU over its sampling loop; the whole process,
Python start-up included, is printed beside it from wait4's rusage). Exits 1 on any miss.

    .venv/bin/python benchmarks/telemetry_cadence.py                 # 60 s, host + NVMe + procs
    .venv/bin/python benchmarks/telemetry_cadence.py --seconds 10 --fake-scrape   # + one changing /metrics
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_metrics_server() -> tuple[ThreadingHTTPServer, str]:
    """A KVBM + engine style exposition (~120 lines) whose counters move on every GET."""
    state = {"n": 0}

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real exporters
        def do_GET(self):
            state["n"] += 1
            n = state["n"]
            lines = []
            for name in ("offload_blocks_d2h", "offload_blocks_h2d", "offload_blocks_d2d",
                         "onboard_blocks_h2d", "onboard_blocks_d2d", "matched_tokens"):
                lines += [f"# HELP kvbm_{name} x", f"# TYPE kvbm_{name} counter", f"kvbm_{name} {n * 3}"]
            for h in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "time_per_output_token_seconds"):
                lines += [f"# HELP trtllm_{h} x", f"# TYPE trtllm_{h} histogram"]
                acc = 0
                for i, le in enumerate(("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
                                        "2.5", "5.0", "10.0", "+Inf")):
                    acc += (n * (i + 1)) % 7
                    lines.append(f'trtllm_{h}_bucket{{engine_type="pytorch",le="{le}",model_name="m"}} {acc}.0')
                lines += [f'trtllm_{h}_count{{engine_type="pytorch",model_name="m"}} {acc}.0',
                          f'trtllm_{h}_sum{{engine_type="pytorch",model_name="m"}} {n * 0.1}']
            for g in ("num_requests_running", "num_requests_waiting", "kv_cache_utilization"):
                lines += [f"# TYPE trtllm_{g} gauge", f'trtllm_{g}{{engine_type="pytorch",model_name="m"}} {n % 5}.0']
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/metrics"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval-ms", type=float, default=200.0)
    ap.add_argument("--tier2-path", default=tempfile.gettempdir())
    ap.add_argument("--scrape", action="append", default=[], metavar="NAME=URL")
    ap.add_argument("--fake-scrape", action="store_true", help="also scrape a local changing /metrics")
    ap.add_argument("--out-dir", help="keep the collector's outputs here (default: a temporary folder)")
    ap.add_argument("--cpu-limit-pct", type=float, default=1.0)
    ap.add_argument("--scrape-client", choices=("raw", "stdlib", "httpx"), default="raw")
    args = ap.parse_args()

    srv = None
    scrapes = list(args.scrape)
    if args.fake_scrape:
        srv, url = fake_metrics_server()
        scrapes.append(f"fake={url}")
    tmp = tempfile.TemporaryDirectory() if not args.out_dir else None
    out = Path(args.out_dir or tmp.name)
    argv = [sys.executable, "-m", "kvharness", "sysmon", "--out-dir", str(out), "--interval-ms", str(args.interval_ms),
            "--tier2-path", args.tier2_path, "--watch-tree", str(os.getpid()), "--duration-s", str(args.seconds)]
    for s in scrapes:
        argv += ["--scrape", s]
    if scrapes:
        argv += ["--kv-block-bytes", "2MiB", "--scrape-client", args.scrape_client]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if srv:
        srv.shutdown()
    if proc.returncode != 0:
        print(f"collector exited {proc.returncode}: {err}", file=sys.stderr)
        return 1
    s = json.loads((out / "collector_summary.json").read_text())
    target = args.interval_ms
    med, p99 = s["interval_achieved_median_ms"], s["interval_achieved_p99_ms"]
    present = s["ticks_present_fraction"]
    cpu_pct = s["collector_cpu_pct_of_core"]
    proc_cpu_s = rusage.ru_utime + rusage.ru_stime
    checks = {
        "median": med is not None and abs(med - target) <= 0.01 * target,
        "p99": p99 is not None and abs(p99 - target) <= 0.10 * target,
        "present": present is not None and present >= 0.99,
        "cpu": cpu_pct is not None and cpu_pct < args.cpu_limit_pct,
    }
    print(f"collector cadence: {args.seconds:g} s at {target:g} ms, sources {s['sources']}"
          f"{' + procs' if 'procs' in s['source_samples'] else ''}"
          f"{f' (scrape client {args.scrape_client})' if scrapes else ''}")
    print(f"  interval median  {med:.3f} ms   (target {target:g} ms +-1 %)   {'ok' if checks['median'] else 'MISS'}")
    print(f"  interval p99     {p99:.3f} ms   (+-10 %)                     {'ok' if checks['p99'] else 'MISS'}"
          f"   max {s['interval_achieved_max_ms']:.3f} ms")
    print(f"  ticks present    {s['ticks_present']}/{s['ticks_expected']} = {100 * present:.2f} %  (>= 99 %)"
          f"            {'ok' if checks['present'] else 'MISS'}   missed {s['ticks_missed']}")
    print(f"  collector CPU    {cpu_pct:.3f} % of one core over the loop ({s['collector_cpu_s']:.3f} s in "
          f"{s['wall_s']:.1f} s; < {args.cpu_limit_pct:g} %)   {'ok' if checks['cpu'] else 'MISS'}")
    print(f"  whole process    {proc_cpu_s:.3f} s CPU incl. Python start-up "
          f"({100 * proc_cpu_s / max(s['wall_s'], 1e-9):.3f} % of one core)")
    print(f"  alignment        {s['alignment_fraction']}   tick lag p99 {s['tick_lag_p99_ms']:.3f} ms")
    print(json.dumps({"checks": checks, "summary": {k: s[k] for k in (
        "interval_achieved_median_ms", "interval_achieved_p99_ms", "ticks_present", "ticks_expected",
        "collector_cpu_pct_of_core", "alignment_fraction")}, "process_cpu_s": round(proc_cpu_s, 4)}))
    if tmp:
        tmp.cleanup()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
