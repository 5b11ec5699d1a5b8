"""``kvharness sysmon``: the cell's one telemetry collector process (see docs/telemetry.md)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from kvharness.units import parse_bytes


def _scrape_arg(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=URL (http:// or https://), got {value!r}")
    return name, url


def _fetch_arg(value: str) -> tuple[str, str]:
    tier, sep, family = value.partition("=")
    if not sep or tier not in ("tier0", "tier1", "tier2") or not family:
        raise argparse.ArgumentTypeError(f"expected TIER=FAMILY with TIER tier0|tier1|tier2, got {value!r}")
    return tier, family


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="folder for sysmon.jsonl, dynkv.jsonl, ... (created)")
    parser.add_argument("--interval-ms", type=float, default=200.0, help="cadence in ms (default 200)")
    parser.add_argument("--tier2-path", help="a path on tier 2; its block device (whole disk) is sampled")
    parser.add_argument("--device", help="block device to sample instead (e.g. nvme0n1); overrides --tier2-path")
    parser.add_argument("--watch-tree", type=int, metavar="PID",
                        help="record CPU%% and RSS of every descendant of PID (not the collector itself)")
    parser.add_argument("--scrape", action="append", type=_scrape_arg, default=[], metavar="NAME=URL",
                        help="a Prometheus (or TRT-LLM JSON /metrics) endpoint to scrape every tick; repeatable")
    parser.add_argument("--kv-block-bytes", type=lambda v: parse_bytes(v, "--kv-block-bytes"),
                        help="bytes per KV block, to turn block counters into bytes (e.g. 2MiB)")
    parser.add_argument("--fetch-hist", action="append", type=_fetch_arg, default=[], metavar="TIER=FAMILY",
                        help="a histogram (seconds) of the stack's own that gives tierN fetch p50/p95/p99, e.g. "
                             "tier2=my_disk_read_seconds or tier1='family{tier=1}' (repeatable)")
    parser.add_argument("--duration-s", type=float, help="stop after T seconds (default: until SIGTERM/SIGINT)")
    parser.add_argument("--start-file", metavar="PATH",
                        help="start sampling only once PATH exists (a caller starts the process early, so its "
                             "start-up overlaps the server's; the first tick's clock starts then)")
    parser.add_argument("--scrape-timeout-ms", type=float,
                        help="per-request scrape timeout (default 40%% of the interval, 50..1000 ms)")
    parser.add_argument("--scrape-client", choices=("raw", "stdlib", "httpx"), default="raw",
                        help="HTTP client for scrapes: raw keep-alive HTTP/1.1 socket (default; ~0.05 ms CPU per "
                             "GET; https falls back to stdlib), http.client (~0.3 ms) or httpx (~1.8 ms)")


def main(args: argparse.Namespace) -> int:
    from kvharness.telemetry.collector import Collector, CollectorConfig

    scrapes: dict[str, str] = {}
    for name, url in args.scrape:
        if name in scrapes or name in ("host", "nvme", "gpu", "procs"):
            print(f"kvharness sysmon: duplicate or reserved scrape name {name!r}", file=sys.stderr)
            return 2
        scrapes[name] = url
    if args.interval_ms <= 0:
        print("kvharness sysmon: --interval-ms must be positive", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    cfg = CollectorConfig(
        out_dir=args.out_dir, interval_ms=args.interval_ms, tier2_path=args.tier2_path, device=args.device,
        watch_tree=args.watch_tree, scrapes=scrapes, kv_block_bytes=args.kv_block_bytes,
        fetch_hists=dict(args.fetch_hist),
        duration_s=args.duration_s,
        scrape_timeout_s=(args.scrape_timeout_ms / 1000.0) if args.scrape_timeout_ms else None,
        scrape_client=args.scrape_client,
    )
    collector = Collector(cfg, stop)
    start_file = getattr(args, "start_file", None)
    while start_file and not os.path.exists(start_file):  # everything imported and opened: only sampling is left
        if stop.wait(0.005):
            return 0  # stopped before it was asked to sample: nothing was measured
    summary = collector.run()
    keys = ("ticks_expected", "ticks_present", "ticks_missed", "interval_achieved_median_ms",
            "interval_achieved_p99_ms", "alignment_fraction", "collector_cpu_pct_of_core")
    print(json.dumps({k: summary.get(k) for k in keys}), file=sys.stderr)
    return 0
