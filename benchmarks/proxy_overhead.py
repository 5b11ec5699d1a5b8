"""TTFT through `kvharness proxy` vs direct, same simulator, same load, same run.

    python benchmarks/proxy_overhead.py [--concurrency 64] [--duration-s 6] [--rounds 6] [--limit-ms 2]

One simulator (sim-A, LoRA off) serves closed-loop `kvharness loadgen` runs of ``--concurrency`` users,
either straight to the simulator or through the proxy, whose requests name one of ``--adapters``
adapters (all resident after their first use, which falls in the first warm-up) that the proxy strips.
Rounds alternate the paths in ABBA order (direct, proxy, proxy, direct, ...), one path at a time, so both
see the same load on the same simulator and a slow drift of the machine falls on both equally. Each
path's records are pooled over its rounds; the difference of the pooled TTFT percentiles is what the
proxy adds (parsing, the adapter lookup, one more loopback hop, re-framing every chunk).

The simulator is pinned to one CPU and the generator and the proxy to another (``cores()``), as the
other benchmarks do. The per-round p99 of each path is printed too: their spread is the noise floor of
this machine, against which a difference of a few milliseconds has to be read, and the 95 % interval of
the difference comes from resampling whole rounds. The proxy's own CPU time per request is printed too.
Closed-loop users fall into lock-step with the engine's batches, so a hop that delays every request a
little can move the whole path to a better phase: the proxied path can come out faster (measured on
2 cores: p99 -15 ms, CI [-18, -14] ms pinned; -14 ms unpinned) — the verdict says only "the proxy adds
no more than the limit". ``--layout shared`` runs both paths at the same time instead (the proxy
path then queues behind the direct one in the simulator's batches: a different question).

Exit 1 when the pooled p99 difference exceeds ``--limit-ms`` (2 ms, the acceptance target) or a path has
no successful request.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import urllib.request

from machine import StealMeter, cores, load_average, proc_cpu_s
from sim_common import ROOT, free_port, sim_process, wait_healthy

sys.path.insert(0, str(ROOT / "src"))
from kvharness.stats import percentile

MODEL = "bench-model"


def load_spec(base: str, concurrency: int, think_ms: float, duration_s: float, warmup_s: float,
              lora: dict | None) -> dict:
    pattern = {"kind": "closed", "concurrency": concurrency}
    if think_ms > 0:
        pattern.update(think_time_s=think_ms / 1000, think_dist="exponential")
    spec = {"base_url": base, "model": MODEL, "pattern": pattern,
            "workload": {"kind": "fixed_context", "context_tokens": 256, "output_tokens": 16},
            "duration_s": duration_s, "warmup_s": warmup_s, "seed": 1, "progress": "off"}
    if lora:
        spec["lora"] = lora
    return spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64, help="users per path (direct and proxied)")
    ap.add_argument("--duration-s", type=float, default=6.0, help="seconds per round (warm-up included)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per path, in ABBA order")
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="mean exponential think time per user between requests (0: none, users fall into lock-step)")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--speedup", type=float, default=20.0)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--limit-ms", type=float, default=2.0)
    ap.add_argument("--layout", choices=["alternate", "shared"], default="alternate",
                    help="alternate: one path at a time, ABBA order (default); shared: both paths at once")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the simulator and the clients apart")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kvh-proxy-bench-")
    sim_args = ["--mode", "A", "--served-model-name", MODEL, "--speedup", str(a.speedup), "--max-batch-size", "256",
                "--max-num-tokens", "16384"]
    client_cpu, server_cpu = (None, None) if a.no_pin else cores()
    pin = (lambda: os.sched_setaffinity(0, client_cpu)) if client_cpu else None
    with sim_process(sim_args, log_path=os.path.join(tmp, "sim.log"), cpus=server_cpu) as (base, _sim, _port):
        pport = free_port()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "kvharness", "proxy", "--backend", base, "--backend-model", MODEL,
             "--port", str(pport), "--adapter-dir", os.path.join(tmp, "lora"), "--resident", str(a.adapters)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "proxy.log"), "w"), start_new_session=True, cwd=ROOT,
            preexec_fn=pin)
        try:
            pbase = f"http://127.0.0.1:{pport}"
            if not wait_healthy(pbase, proxy, 20.0):
                print("proxy did not become healthy; see", os.path.join(tmp, "proxy.log"))
                return 1
            paths = {"direct": load_spec(base, a.concurrency, a.think_ms, a.duration_s, a.warmup_s, None),
                     "proxy": load_spec(pbase, a.concurrency, a.think_ms, a.duration_s, a.warmup_s,
                                        {"count": a.adapters, "policy": "random", "send_as": "adapter_id"})}
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            with StealMeter() as steal:
                proxy_cpu0 = proc_cpu_s(proxy.pid)
                if a.layout == "alternate":  # ABBA: direct proxy proxy direct direct proxy ...
                    plan = [[name] for rnd in range(a.rounds) for name in (list(paths) if rnd % 2 == 0 else list(reversed(paths)))]
                else:
                    plan = [list(paths) if rnd % 2 == 0 else list(reversed(paths)) for rnd in range(a.rounds)]
                runs = {name: [] for name in paths}
                for i, group in enumerate(plan):
                    procs = {}
                    for name in group:
                        stem = os.path.join(tmp, f"{name}-{i}")
                        with open(stem + ".json", "w") as fh:
                            json.dump({**paths[name], "seed": i + 1}, fh)
                        procs[name] = subprocess.Popen(
                            [sys.executable, "-m", "kvharness", "loadgen", "--spec", stem + ".json",
                             "--out", stem + ".jsonl", "--summary-out", stem + ".summary.json"],
                            stdout=subprocess.DEVNULL, stderr=open(stem + ".log", "w"), env=env, cwd=ROOT,
                            preexec_fn=pin)
                        runs[name].append(stem + ".jsonl")
                    for p in procs.values():
                        p.wait(timeout=a.duration_s + 120)
                proxy_cpu = proc_cpu_s(proxy.pid) - proxy_cpu0
            with urllib.request.urlopen(pbase + "/metrics", timeout=5) as r:
                metrics = r.read().decode()
        finally:
            if proxy.poll() is None:
                os.killpg(proxy.pid, signal.SIGTERM)
                proxy.wait(10)
    res, rounds_ok = {}, {}
    for name, files in runs.items():
        pooled, per_round, n_all = [], [], 0
        for path in files:
            with open(path) as fh:
                recs = [json.loads(x) for x in fh if x.strip()]
            n_all += sum(1 for r in recs if r.get("window") == "measure")
            ok = [r["lat_ttft_ms"] for r in recs if r.get("window") == "measure" and r.get("rc") == 0
                  and r.get("lat_ttft_ms") is not None]
            pooled += ok
            if ok:
                per_round.append(percentile(ok, 99))
                rounds_ok.setdefault(name, []).append(ok)
        res[name] = {"n_ok": len(pooled), "n": n_all, "p50": percentile(pooled, 50) if pooled else None,
                     "p99": percentile(pooled, 99) if pooled else None, "rounds_p99": per_round}
    both = "one path at a time, ABBA" if a.layout == "alternate" else "both paths at once"
    print(f"TTFT at concurrency {a.concurrency} per path, {both}, against one simulator "
          f"(speedup {a.speedup:g}, {a.rounds} rounds per path x {a.duration_s:g} s, warm-up {a.warmup_s:g} s of each excluded)")
    pinned = f"simulator on CPU {sorted(server_cpu)}, generators and proxy on CPU {sorted(client_cpu)}" if client_cpu else "not pinned"
    print(f"machine: {load_average()}; {steal.describe()}; {pinned}")
    print(f"{'path':<8} {'requests':>9} {'ok':>7} {'p50 ms':>9} {'p99 ms':>9}   per-round p99 ms (spread)")
    for name, r in res.items():
        p50 = f"{r['p50']:.2f}" if r["p50"] is not None else "-"
        p99 = f"{r['p99']:.2f}" if r["p99"] is not None else "-"
        rp = r["rounds_p99"]
        spread = f"{' '.join(f'{x:.1f}' for x in rp)} ({max(rp) - min(rp):.1f})" if rp else "-"
        print(f"{name:<8} {r['n']:>9} {r['n_ok']:>7} {p50:>9} {p99:>9}   {spread}")
    if res["proxy"]["n"]:
        print(f"proxy CPU: {proxy_cpu * 1000 / res['proxy']['n']:.3f} ms per proxied request "
              f"({proxy_cpu:.1f} s over the run, warm-ups included)")
    loads = next((line.split()[1] for line in metrics.splitlines() if line.startswith("kvproxy_lora_loads_total")), "?")
    print(f"proxy adapter loads: {loads} (the {a.adapters} first uses, in the first warm-up)")
    if not all(r["n_ok"] for r in res.values()):
        print("FAIL: a path has no successful request; logs in", tmp)
        return 1
    d50 = res["proxy"]["p50"] - res["direct"]["p50"]
    d99 = res["proxy"]["p99"] - res["direct"]["p99"]
    lo, hi = round_bootstrap_ci(rounds_ok["direct"], rounds_ok["proxy"])
    verdict = "PASS" if d99 <= a.limit_ms else "FAIL"
    print(f"proxy - direct: p50 {d50:+.2f} ms, p99 {d99:+.2f} ms, 95 % CI of the p99 difference "
          f"[{lo:+.1f}, {hi:+.1f}] ms (bootstrap over rounds) (limit p99 <= {a.limit_ms:g} ms): {verdict}")
    if lo <= a.limit_ms < hi:
        print(f"note: the interval ({hi - lo:.1f} ms wide) holds the limit, so this machine cannot tell whether the "
              "proxy stays within it; rerun with more --rounds, or on a quiet machine with more cores")
    elif hi < -a.limit_ms:
        print("note: the proxied path is faster beyond the noise: its extra hop shifts when requests reach the "
              "engine relative to its steps (closed-loop users fall into lock-step with the batches), which "
              "outweighs what the hop costs; the proxy's own cost is its CPU time above")
    return 0 if verdict == "PASS" else 1


def round_bootstrap_ci(direct: list[list[float]], proxy: list[list[float]], n: int = 400,
                       seed: int = 7) -> tuple[float, float]:
    """95 % interval of pooled-p99(proxy) - pooled-p99(direct), resampling whole rounds with replacement
    (a round, not a request, is the unit that varies: one round's phase with the engine steps moves its
    whole tail)."""
    rng = random.Random(seed)
    diffs = []
    for _ in range(n):
        pd = [x for r in rng.choices(direct, k=len(direct)) for x in r]
        pp = [x for r in rng.choices(proxy, k=len(proxy)) for x in r]
        diffs.append(percentile(pp, 99) - percentile(pd, 99))
    diffs.sort()
    return diffs[int(0.025 * n)], diffs[int(0.975 * n) - 1]


if __name__ == "__main__":
    sys.exit(main())
