"""Measure the simulated stacks against the DGX Spark (GB10) figures in SPEC.md.

    python benchmarks/sim_calibration.py            # all profiles with a target in configs/models.yaml
    python benchmarks/sim_calibration.py --mode B   # through sim-B instead of sim-A

Everything is measured end to end through a running ``kvharness sim`` (HTTP, SSE, engine loop) at a
speedup chosen so one decode step lasts ~25 ms of wall time, then scaled back to real time
(x speedup):
- prefill tok/s  = 2048 / TTFT of a 2048-token prompt (request overhead included, as a client sees it)
- decode tok/s BS1 = 1 / median inter-token gap of one stream (1024-token prompt, 64 output tokens)
- decode tok/s BS32 = 32 / median inter-token gap with 32 concurrent streams (aggregate)
- TTFT of a 29-token prompt (the field-notes measurement)
Each figure with a target must lie within +-15 %; the exit code is 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time


from sim_common import ROOT, prompt_words, sim_process

TOL = 0.15


async def stream_times(session, base: str, prompt: str, max_tokens: int) -> tuple[float, list[float]]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
    t0 = time.perf_counter()
    times: list[float] = []
    async with session.post(base + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        buf = b""
        async for chunk in resp.content.iter_any():
            now = time.perf_counter()
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if ev.startswith(b"data: {") and b'"choices":[]' not in ev:
                    times.append(now)
    return t0, times


async def measure(base: str, speedup: float) -> dict:
    import aiohttp

    out = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await stream_times(s, base, "warm up", 2)
        ttfts = []
        for i in range(3):
            t0, ts = await stream_times(s, base, prompt_words(2048, f"pf{i}"), 1)
            ttfts.append(ts[0] - t0)
        out["prefill_tok_s"] = 2048 / (statistics.median(ttfts) * speedup)
        ttfts = []
        for i in range(5):
            t0, ts = await stream_times(s, base, prompt_words(29, f"short{i}"), 1)
            ttfts.append(ts[0] - t0)
        out["ttft_short_prompt_ms"] = statistics.median(ttfts) * speedup * 1e3
        t0, ts = await stream_times(s, base, prompt_words(1024, "bs1"), 64)
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        out["decode_tok_s_bs1"] = 1 / (statistics.median(gaps) * speedup)
        res = await asyncio.gather(*(stream_times(s, base, prompt_words(1024, f"bs32-{i}"), 96) for i in range(32)))
        gaps = [b - a for _, ts in res for a, b in zip(ts[40:], ts[41:])]  # after every prefill is done
        out["decode_tok_s_bs32"] = 32 / (statistics.median(gaps) * speedup)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("A", "B"), default="A")
    ap.add_argument("--step-wall-ms", type=float, default=25.0, help="target wall time of a BS1 decode step")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from kvharness.sim.profiles import build_timing_model, load_models_yaml

    cfg = load_models_yaml()
    targets = cfg.get("calibration_targets", {})
    failures = 0
    print(f"{'profile':26s} {'figure':22s} {'sim':>10s} {'model':>10s} {'SPEC':>10s} {'dev':>7s}")
    for model, precs in targets.items():
        for prec, tgt in precs.items():
            tm = build_timing_model("gb10", model, prec, cfg)
            speedup = max(1.0, tm.decode_step_s(1, 1024) * 1e3 / a.step_wall_ms)
            args = ["--mode", a.mode, "--model-profile", model, "--precision", prec, "--speedup", f"{speedup:.3f}",
                    "--tier0-bytes", "32GiB", "--max-batch-size", "64", "--max-num-tokens", "8192"]
            if a.mode == "B":
                args += ["--metrics-port", "0", "--tier1-bytes", "0", "--tier2-bytes", "0"]
            with sim_process(args) as (base, _proc, _port):
                got = asyncio.run(measure(base, speedup))
            formula = {"prefill_tok_s": 2048 / tm.ttft_s(2048), "decode_tok_s_bs1": 1 / tm.decode_step_s(1, 1056),
                       "decode_tok_s_bs32": 32 / tm.decode_step_s(32, 1100), "ttft_short_prompt_ms": tm.ttft_s(29) * 1e3}
            for key in ("prefill_tok_s", "decode_tok_s_bs1", "decode_tok_s_bs32", "ttft_short_prompt_ms"):
                ref = tgt.get(key)
                dev = (got[key] / ref - 1) if ref else None
                flag = ""
                if dev is not None and abs(dev) > TOL:
                    flag = "  FAIL"
                    failures += 1
                print(f"{model + ' ' + prec:26s} {key:22s} {got[key]:10.1f} {formula[key]:10.1f} "
                      f"{(f'{ref:10.1f}' if ref else '       n/a')} {(f'{dev:+7.1%}' if dev is not None else '       ')}{flag}",
                      flush=True)
    print("calibration:", "OK (all within +-15 %)" if not failures else f"{failures} figure(s) outside +-15 %")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
