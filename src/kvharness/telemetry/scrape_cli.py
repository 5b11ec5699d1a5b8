"""``kvharness scrape URL``: scrape a metrics endpoint once (or twice, for deltas) and print the mapping."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvharness.units import parse_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="Prometheus text endpoint, or TRT-LLM's JSON /metrics")
    parser.add_argument("--kv-block-bytes", type=lambda v: parse_bytes(v, "--kv-block-bytes"))
    parser.add_argument("--interval-ms", type=float, default=1000.0,
                        help="gap between the baseline and the second scrape (deltas)")
    parser.add_argument("--raw", action="store_true", help="also print every parsed sample of the second scrape")
    parser.add_argument("--timeout-s", type=float, default=5.0)


def main(args: argparse.Namespace) -> int:
    import httpx

    from kvharness.telemetry.prom import DeltaState, map_deltas, parse_body

    state = DeltaState()
    snap = None
    with httpx.Client(timeout=args.timeout_s) as client:
        for i in range(2):
            if i:
                time.sleep(args.interval_ms / 1000.0)
            try:
                r = client.get(args.url)
                r.raise_for_status()
            except Exception as exc:
                print(f"kvharness scrape: {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            snap = parse_body(r.text)
            deltas = state.update(snap)
    block = args.kv_block_bytes
    if block is None and snap is not None and snap.iterations is None:
        g = snap.gauge_sum("kvsim_kv_block_size_bytes")  # the simulator says its own block size
        block = int(g) if g else None
    rec = map_deltas({"src": deltas}, block)
    out = {"url": args.url, "interval_ms": args.interval_ms, "kv_block_size_bytes": block, **rec}
    if args.raw and snap is not None:
        out["parsed"] = {
            "counters": sorted({k[0] for k in snap.counters}),
            "gauges": sorted({k[0] for k in snap.gauges}),
            "histograms": sorted(snap.buckets),
            "iterations": len(snap.iterations) if snap.iterations is not None else None,
        }
    print(json.dumps(out, indent=2, default=str))
    return 0
