"""`kvharness sim`: run a simulated serving stack (sim-A memory-only, sim-B tiered KV) as an HTTP server.

See docs/simulator.md for the model and every flag; docs/architecture.md for the contract.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import tempfile

from kvharness.defaults import ENGINE, SIM
from kvharness.netaddr import is_loopback
from kvharness.units import parse_bytes

_GiB = 1024 ** 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("A", "B"), required=True,
                   help="A = memory-only (TRT-LLM-like, trtllm_* metrics); B = tiered KV (Dynamo+KVBM-like)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --host")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8355 for A, 9000 for B)")
    p.add_argument("--fd", type=int, default=None,
                   help="serve the API on this inherited listening socket (the harness bound the port; "
                        "--port then only names it)")
    p.add_argument("--metrics-fd", type=int, default=None, help="mode B: the same for the KVBM metrics port")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="mode B: port of the kvbm_* metrics server (default $DYN_KVBM_METRICS_PORT or 6880; 0 = off)")
    p.add_argument("--models-config", default=None, help="profiles YAML (default configs/models.yaml)")
    p.add_argument("--model-profile", default="llama-3.1-8b", help="model profile in the profiles YAML")
    p.add_argument("--precision", default="fp8", help="weight precision of the model profile (fp8, nvfp4)")
    p.add_argument("--hardware", default="gb10", help="hardware profile")
    p.add_argument("--served-model-name", default=None, help="model id in the API (default: the model profile)")
    p.add_argument("--tier0-bytes", default="8GiB", help="device (G1) KV pool size")
    p.add_argument("--tier1-bytes", default=None,
                   help="mode B: host (G2) tier size (default $DYN_KVBM_CPU_CACHE_GB x 10^9 bytes, else 8GiB)")
    p.add_argument("--tier2-bytes", default=None,
                   help="mode B: disk (G3) tier size (default $DYN_KVBM_DISK_CACHE_GB x 10^9 bytes, else 64GiB)")
    p.add_argument("--tier2-dir", default=None,
                   help="mode B: directory of the tier-2 file (default $DYN_KVBM_DISK_CACHE_DIR, else $TMPDIR/kvharness-sim-g3)")
    p.add_argument("--tokens-per-block", type=int, default=ENGINE["tokens_per_block"])
    p.add_argument("--max-batch-size", type=int, default=ENGINE["max_batch_size"])
    p.add_argument("--max-num-tokens", type=int, default=ENGINE["max_num_tokens"],
                   help="token budget of one engine step (chunked prefill)")
    p.add_argument("--eviction-policy", choices=("lru", "lfu", "fifo"), default=ENGINE["eviction_policy"])
    p.add_argument("--block-bytes-scale", type=float, default=SIM["block_bytes_scale"],
                   help="tier-2 file bytes per block = real block bytes x this (recorded in /health and /metrics)")
    p.add_argument("--speedup", type=float, default=SIM["speedup"], help="divide every modelled duration by this (1 = real time)")
    p.add_argument("--seed", type=int, default=SIM["seed"])
    p.add_argument("--jitter", type=float, default=0.0,
                   help="relative std-dev of a seeded Gaussian factor on each step time (0 = deterministic steps)")
    p.add_argument("--startup-time-s", type=float, default=0.0, help="/health answers 503 for this long")
    p.add_argument("--register-after-s", type=float, default=0.0,
                   help="/v1/models lists no model (and generation answers 404) for this long while /health "
                        "already answers 200, like Dynamo's frontend before a worker registers")
    p.add_argument("--io-threads", type=int, default=4, help="threads doing tier-2 file I/O")
    p.add_argument("--keep-tier2-file", action="store_true", help="do not delete the tier-2 file on exit")
    p.add_argument("--disk-offload-filter", choices=("auto", "on", "off"), default="auto",
                   help="mode B: KVBM's filter (a block reaches disk only after a reuse). auto = on only when "
                        "DYN_KVBM_DISABLE_DISK_OFFLOAD_FILTER is set to false/0; benchmarks disable it")
    g = p.add_argument_group("LoRA")
    g.add_argument("--max-loras", type=int, default=ENGINE["max_loras"], help="resident adapter slots (0 = LoRA off)")
    g.add_argument("--lora-dir", default=None, help="adapter files (default <tier2-dir>/lora in mode B)")
    g.add_argument("--lora-adapter-bytes", default=ENGINE["lora_adapter_bytes"],
                   help="modelled adapter size; the file holds this x --block-bytes-scale")
    f = p.add_argument_group("faults (reliability tests)")
    f.add_argument("--fault-crash-after", type=int, default=0, help="exit abruptly after N completed requests")
    f.add_argument("--fault-hang", action="store_true", help="accept generation requests and never answer")
    f.add_argument("--fault-error-rate", type=float, default=0.0, help="fraction of requests answered with an error")
    f.add_argument("--fault-error-status", type=int, choices=(500, 429), default=500)
    f.add_argument("--fault-malformed-every", type=int, default=0,
                   help="every N-th streamed request gets a malformed second event")
    f.add_argument("--fault-slow-drip-ms", type=float, default=0.0, help="extra delay between streamed events")


def _env_gib(name: str):
    """A ``DYN_KVBM_*_CACHE_GB`` value the way KVBM reads it: a float times 10^9 bytes (not GiB)."""
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    return int(round(float(v) * 10**9))


def build_config(args):
    from kvharness.sim.profiles import build_timing_model, load_models_yaml
    from kvharness.sim.server import SimConfig

    if not is_loopback(args.host) and not args.allow_remote:
        raise ValueError(f"--host {args.host} is not a loopback address; pass --allow-remote to expose the simulator")
    timing = build_timing_model(args.hardware, args.model_profile, args.precision, load_models_yaml(args.models_config))
    mode = args.mode
    if mode == "B":
        t1 = parse_bytes(args.tier1_bytes, "--tier1-bytes") if args.tier1_bytes is not None else _env_gib("DYN_KVBM_CPU_CACHE_GB")
        t2 = parse_bytes(args.tier2_bytes, "--tier2-bytes") if args.tier2_bytes is not None else _env_gib("DYN_KVBM_DISK_CACHE_GB")
        t1 = 8 * _GiB if t1 is None else t1
        t2 = 64 * _GiB if t2 is None else t2
        t2dir = args.tier2_dir or os.environ.get("DYN_KVBM_DISK_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "kvharness-sim-g3")
        mport = args.metrics_port
        if mport is None:
            mport = int(os.environ.get("DYN_KVBM_METRICS_PORT") or 6880)
        flt = args.disk_offload_filter
        if flt == "auto":
            flt = "on" if os.environ.get("DYN_KVBM_DISABLE_DISK_OFFLOAD_FILTER", "").strip().lower() in ("false", "0") else "off"
        disk_filter = flt == "on"
    else:
        t1, t2, t2dir, mport, disk_filter = 0, 0, None, 0, False
    for name in ("tokens_per_block", "max_batch_size", "max_num_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.speedup <= 0:
        raise ValueError("--speedup must be > 0")
    if not 0 < args.block_bytes_scale <= 1:
        raise ValueError("--block-bytes-scale must be in (0, 1]")
    if not 0 <= args.fault_error_rate <= 1:
        raise ValueError("--fault-error-rate must be in [0, 1]")
    return SimConfig(
        mode=mode, timing=timing, served_model_name=args.served_model_name or args.model_profile,
        host=args.host, port=args.port if args.port is not None else (8355 if mode == "A" else 9000),
        metrics_port=mport, listen_fd=args.fd, metrics_listen_fd=args.metrics_fd if mode == "B" else None,
        tier0_bytes=parse_bytes(args.tier0_bytes, "--tier0-bytes"), tier1_bytes=t1,
        tier2_bytes=t2, tier2_dir=t2dir, tokens_per_block=args.tokens_per_block, max_batch_size=args.max_batch_size,
        max_num_tokens=args.max_num_tokens, eviction_policy=args.eviction_policy,
        block_bytes_scale=args.block_bytes_scale, speedup=args.speedup, seed=args.seed, jitter=args.jitter,
        startup_time_s=args.startup_time_s, register_after_s=args.register_after_s, max_loras=args.max_loras, lora_dir=args.lora_dir,
        lora_adapter_bytes=parse_bytes(args.lora_adapter_bytes, "--lora-adapter-bytes"), io_threads=args.io_threads,
        fault_crash_after=args.fault_crash_after, fault_hang=args.fault_hang, fault_error_rate=args.fault_error_rate,
        fault_error_status=args.fault_error_status, fault_malformed_every=args.fault_malformed_every,
        fault_slow_drip_ms=args.fault_slow_drip_ms, keep_tier2_file=args.keep_tier2_file,
        disk_offload_filter=disk_filter,
    )


async def _serve(cfg) -> int:
    from kvharness.sim.server import SimServer

    server = SimServer(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if os.environ.get("KVSIM_SLOW_CALLBACK_MS"):  # diagnostics: asyncio debug mode logs slower callbacks
        loop.slow_callback_duration = float(os.environ["KVSIM_SLOW_CALLBACK_MS"]) / 1000
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # The KV index holds ~10^5 long-lived objects; full collections over them stall the loop for tens of
    # ms. Nothing in the engine relies on cycle collection, so collect rarely and never the startup heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    if os.environ.get("KVSIM_GC") == "off":
        gc.disable()
    # The tier-2 I/O threads run only short stretches of Python between syscalls and release the GIL in
    # every syscall; the loop thread releases it whenever it sleeps. A long switch interval means the
    # I/O threads never force the loop thread off the GIL in the middle of a step (the convoy effect
    # on a busy 2-core box cost up to 20 ms per step with the 5 ms default or shorter).
    sys.setswitchinterval(0.05)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


def main(args) -> int:
    try:
        cfg = build_config(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kvharness sim: {e}", file=sys.stderr)
        return 2
    runner = asyncio.run
    if os.environ.get("KVSIM_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:  # pragma: no cover
            pass
    try:
        return runner(_serve(cfg))
    except OSError as e:
        print(f"kvharness sim: {e}", file=sys.stderr)
        return 1
