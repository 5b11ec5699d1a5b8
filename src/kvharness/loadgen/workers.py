"""Spread one run over several processes when one core is not enough (``workers: N``).

Each worker is a forked process running its own ``Runner`` on a share of the load, all starting at
one common monotonic time (the clock is shared by every process on Linux):

* closed / bursty: the users are split (N users → N // W each, the first N % W get one more);
  sessions: the sessions and the users are split;
* constant / Poisson / ramp: each worker runs at rate / W (a sum of independent Poisson streams
  is a Poisson stream of the summed rate; constant streams are phase-shifted to interleave); gamma:
  rate / W each — the merged stream keeps the mean rate, not exactly the CoV;
* trace: rows are dealt round-robin;
* ``max_requests`` and ``max_errors`` are split; the in-flight cap too.

Every worker appends its records to the same ``metrics.jsonl`` (one ``write`` per record on an
``O_APPEND`` file, so lines never interleave); the parent summarizes the merged records and combines
the workers' self-checks (the run is client-bound when any worker was).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import signal
import time

from kvharness.loadgen.patterns import make_pattern, trace_rows
from kvharness.loadgen.lora import per_adapter
from kvharness.stats import summarize_requests

START_DELAY_NS = 1_500_000_000  # time for every worker to fork, connect and prebuild before t0


def _share(total: int | None, i: int, n: int) -> int | None:
    if total is None:
        return None
    return total // n + (1 if i < total % n else 0)


def split_spec(spec: dict, i: int, n: int) -> dict | None:
    """Worker ``i`` of ``n``'s share of the spec; None when the share is empty."""
    s = copy.deepcopy(spec)
    s["workers"] = 1
    s["seed"] = spec["seed"] * 1000 + i
    s["progress"] = "off"
    p, w = s["pattern"], s["workload"]
    if s["max_requests"] is not None:
        s["max_requests"] = _share(spec["max_requests"], i, n)
        if s["max_requests"] == 0:
            return None
    if s["max_errors"] is not None:
        s["max_errors"] = max(1, -(-spec["max_errors"] // n))
    if s.get("min_ok_requests") is not None:
        s["min_ok_requests"] = max(1, -(-spec["min_ok_requests"] // n))
    if "concurrency" in p:
        s["labels"].setdefault("concurrency", p["concurrency"])  # records carry the run's, not the share
        p["concurrency"] = _share(p["concurrency"], i, n)
        if p["concurrency"] == 0:
            return None
    if w["kind"] == "sessioned_chat":
        w["sessions"] = _share(w["sessions"], i, n)
        if w["sessions"] == 0:
            return None
        if w.get("pressure") and w["pressure"].get("rate"):
            w["pressure"]["rate"] = w["pressure"]["rate"] / n
        if w.get("pressure") and w["pressure"].get("count"):
            w["pressure"]["count"] = max(1, _share(w["pressure"]["count"], i, n))
    for key in ("rate", "start_rate", "end_rate", "spawn_rate"):
        if p.get(key) is not None:
            p[key] = p[key] / n
    if p.get("max_in_flight") is not None:
        p["max_in_flight"] = max(1, _share(p["max_in_flight"], i, n))
    if p["kind"] == "trace":
        rows = trace_rows(p)
        p["_rows"] = rows[i::n]
        p["_t_first"] = rows[0]["timestamp"] if rows else 0
        if not p["_rows"]:
            return None
    s["_worker"] = i
    return s


def _child(spec: dict, out_path: str, start_at_ns: int, offset_ns: int, conn) -> None:
    import asyncio

    from kvharness.loadgen.patterns import TraceReplay
    from kvharness.loadgen.runner import Runner

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM; the loop handles it
    rows = spec["pattern"].pop("_rows", None)
    t_first = spec["pattern"].pop("_t_first", 0)
    pattern = TraceReplay(rows, spec["pattern"]["time_scale"], spec["pattern"]["max_in_flight"]) if rows \
        else make_pattern(spec)
    if rows:  # this worker's first row is due at its offset from the trace's first row
        offset_ns += int((rows[0]["timestamp"] - t_first) * spec["pattern"]["time_scale"] * 1_000_000)
    with open(out_path, "a", buffering=1 << 20, encoding="utf-8") as out:
        runner = Runner(spec, out, pattern=pattern, start_at_ns=start_at_ns + offset_ns, summarize=False)
        try:
            import uvloop

            loop_runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:  # pragma: no cover
            loop_runner = asyncio.Runner()
        with loop_runner as lr:
            summary = lr.run(runner.run())
    summary.pop("spec", None)
    conn.send({"summary": summary, "signal": runner.signal_name, "stop_reason": runner.stop_reason})
    conn.close()


def run_workers(spec: dict, out_path: str, n: int) -> tuple[dict, str | None, str | None]:
    """Run ``spec`` on ``n`` processes; returns (summary, signal name or None, stop reason). Phases: start the
    workers, collect them (forwarding SIGINT/SIGTERM), read their records back, combine the summaries."""
    open(out_path, "w").close()
    procs = _start_workers(spec, out_path, n)
    results, got_signal = _collect(procs)
    records, torn = _read_back(out_path)
    summary, stop_reasons = _combine(spec, records, torn, results, n_procs=len(procs))
    summary["interrupted"] = got_signal[0] if got_signal else None
    sig = got_signal[0] if got_signal else None
    first = [r for r in ("write_failed", "max_errors", "max_consecutive_errors") if r in stop_reasons]
    reason = first[0] if first else (stop_reasons[0] if stop_reasons else None)
    return summary, sig, reason


def _start_workers(spec: dict, out_path: str, n: int) -> list:
    ctx = multiprocessing.get_context("fork")
    start_at = time.monotonic_ns() + START_DELAY_NS
    kind = spec["pattern"]["kind"]
    procs = []
    for i in range(n):
        share = split_spec(spec, i, n)
        if share is None:
            continue
        # constant arrivals and spawning users: phase-shift the workers so their sends interleave evenly
        every = spec["pattern"].get("rate") if kind == "constant" else spec["pattern"].get("spawn_rate")
        offset = int(i / every * 1e9) if every else 0
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(share, out_path, start_at, offset, child_conn), daemon=False)
        proc.start()
        child_conn.close()
        procs.append((proc, parent_conn))
    return procs


def _collect(procs: list) -> tuple[list, list[str]]:
    """Each worker's result (None for one that died) and the signals forwarded to them meanwhile."""
    got_signal: list[str] = []

    def forward(signum, _frame):
        got_signal.append("SIGINT" if signum == signal.SIGINT else "SIGTERM")
        for proc, _ in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    results = []
    try:
        for proc, conn in procs:
            try:
                results.append(conn.recv())
            except EOFError:
                results.append(None)
            proc.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return results, got_signal


def _read_back(out_path: str) -> tuple[list[dict], int]:
    records, torn = [], 0
    with open(out_path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:  # a worker's write cut by a full disk (then another worker's lines follow)
                torn += 1
    return records, torn


def _combine(spec: dict, records: list[dict], torn: int, results: list, n_procs: int) -> tuple[dict, list[str]]:
    summary = summarize_requests([r for r in records if r.get("window") == "measure"], slo=spec["slo"])
    if spec.get("lora"):
        summary["per_adapter"] = per_adapter(r for r in records if r.get("window") == "measure")
    worker_summaries = [r["summary"] for r in results if r]
    summary.update(combine_selfchecks(worker_summaries))
    stop_reasons = sorted({r["stop_reason"] for r in results if r and r["stop_reason"]})
    summary.update({
        "workers": n_procs,
        "workers_failed": sum(1 for r in results if r is None),
        "n_torn_records": torn,
        "n_records": len(records),
        "n_excluded_warmup": sum(1 for r in records if r.get("window") == "warmup"),
        "n_excluded_cooldown": sum(1 for r in records if r.get("window") == "cooldown"),
        "n_sent": sum(w.get("n_sent", 0) for w in worker_summaries),
        "n_cancelled": sum(w.get("n_cancelled", 0) for w in worker_summaries),
        "stop_reason": ",".join(stop_reasons) or None,
        "interrupted": None,
        "client_bound_records": sum(1 for r in records if r.get("client_bound")),
        "transport": spec["transport"],
        "spec": spec,
        "per_worker": worker_summaries,
    })
    sent = sorted(r["sent_ns"] for r in records if r.get("sent_ns") is not None)
    summary["achieved_send_rate"] = ((len(sent) - 1) / ((sent[-1] - sent[0]) / 1e9)
                                     if len(sent) > 1 and sent[-1] > sent[0] else None)
    return summary, stop_reasons


def combine_selfchecks(ws: list[dict]) -> dict:
    def mx(key):
        vals = [w[key] for w in ws if w.get(key) is not None]
        return max(vals) if vals else None

    n = sum(w.get("n_records", 0) for w in ws)
    cpu = sum(w.get("client_cpu_s", 0.0) for w in ws)
    return {
        "client_cpu_s": cpu,
        "client_cpu_pct": mx("client_cpu_pct"),  # the busiest worker's share of its core
        "client_cpu_pct_max_window": mx("client_cpu_pct_max_window"),
        "client_cpu_ms_per_req": (1e3 * cpu / n) if n else None,
        "loop_lag_ms_p99": mx("loop_lag_ms_p99"),
        "loop_lag_ms_max": mx("loop_lag_ms_max"),
        "send_lag_ms_p50": mx("send_lag_ms_p50"),
        "send_lag_ms_p99": mx("send_lag_ms_p99"),
        "sched_lag_ms_p99": mx("send_lag_ms_p99"),
        "send_lag_ms_max": mx("send_lag_ms_max"),
        "read_lag_ms_p99": mx("read_lag_ms_p99"),
        "read_lag_ms_max": mx("read_lag_ms_max"),
        "client_bound": any(w.get("client_bound") for w in ws),
        "client_bound_windows": sum(w.get("client_bound_windows", 0) for w in ws),
        "max_connections": sum(w.get("max_connections") or 0 for w in ws),
        "run_wall_s": mx("run_wall_s"),
    }
