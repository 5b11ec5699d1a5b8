"""Whether a finished cell measured what it claims (docs/definitions.md "Cell validity").

Two kinds of check, recorded one by one in ``summary.json`` (``checks``: value, limit, passed, kind):

* **measurement** — the harness could not do its part: the client could not generate the load
  (client-bound, far fewer requests in flight than the concurrency asked for), the telemetry is mostly
  missing, or the simulator's own tier-2 file I/O failed. A cell failing one is ``invalid``: kept and
  listed, never analysed as a point.
* **server** — the server misbehaved: errors (HTTP errors, timeouts, refusals), or it fell silent with
  requests outstanding. That is a result (collapse analysis needs it), so the cell is analysed, but it
  is ``degraded`` and says why, because its latency percentiles cover only the requests that succeeded.
"""

from __future__ import annotations

import numpy as np

from kvharness.loadgen.spec import DEFAULT_PATTERN

ACHIEVED_CONCURRENCY_MIN = 0.5  # peak requests in flight / concurrency asked for, closed loops
ALIGNMENT_INVALID_BELOW = 0.5   # telemetry covers under half the windows: a gap, not a thin record
CLIENT_CPU_PCT = 90.0           # the load generator's CPU over the whole run, % of one core
CLIENT_SEND_LAG_P50_MS = 10.0   # the typical send late by more than this: the schedule was not kept
HANG_S = 5.0                    # the server sent nothing for this long while requests were outstanding


def client_bound(loadgen: dict) -> dict | None:
    """Whether the client, not the server, set the pace: it used a whole core, or its typical send went out
    late. The load generator's own ``client_bound`` flag (send-lag p99 > 5 ms in a 0.5 s window) also fires
    when a busy machine delays a burst of sends while the client idles; that is recorded here, not taken
    for a failed measurement."""
    if not loadgen or (loadgen.get("client_cpu_pct") is None and loadgen.get("send_lag_ms_p50") is None):
        return None
    cpu, lag50 = float(loadgen.get("client_cpu_pct") or 0.0), float(loadgen.get("send_lag_ms_p50") or 0.0)
    why = []
    if cpu > CLIENT_CPU_PCT:
        why.append(f"client CPU {cpu:.0f} % of a core")
    if lag50 > CLIENT_SEND_LAG_P50_MS:
        why.append(f"send lag p50 {lag50:.1f} ms")
    return {"bound": bool(why), "why": ", ".join(why), "flag": bool(loadgen.get("client_bound")),
            "bound_windows": loadgen.get("client_bound_windows"), "windows": loadgen.get("selfcheck_windows"),
            "cpu_pct": round(cpu, 1), "send_lag_ms_p50": round(lag50, 3)}


def _check(kind: str, value, limit: str, passed: bool | None, why: str = "") -> dict:
    out = {"kind": kind, "value": value, "limit": limit, "passed": passed}
    if why and passed is False:
        out["why"] = why
    return out


def peak_in_flight(records: list[dict]) -> int:
    """Most requests sent and not yet ended at one instant (from each record's sent_ns / end_ns)."""
    sent = [r["sent_ns"] for r in records if isinstance(r.get("sent_ns"), int) and isinstance(r.get("end_ns"), int)]
    ends = [r["end_ns"] for r in records if isinstance(r.get("sent_ns"), int) and isinstance(r.get("end_ns"), int)]
    if not sent:
        return 0
    times = np.concatenate([np.asarray(sent, dtype=np.int64), np.asarray(ends, dtype=np.int64)])
    steps = np.concatenate([np.ones(len(sent), dtype=np.int64), -np.ones(len(ends), dtype=np.int64)])
    order = np.lexsort((steps, times))  # at equal times an end goes before a send
    return int(np.cumsum(steps[order]).max())


def server_silence_s(records: list[dict]) -> float:
    """Longest time with requests outstanding during which the server sent nothing to any of them
    (no first byte, token or end of an answered request): a hang, not a slow queue, in which
    other streams keep moving."""
    events: list[float] = []
    spans: list[tuple[int, int]] = []
    for r in records:
        sent, end = r.get("sent_ns"), r.get("end_ns")
        if isinstance(sent, int) and isinstance(end, int):
            spans.append((sent, end))
        answered = r.get("rc") == 0 or str(r.get("error_class") or "").startswith("http_")
        if isinstance(r.get("first_byte_ns"), int):
            events.append(r["first_byte_ns"])
        tok = r.get("first_token_ns")
        if isinstance(tok, int):
            events.append(tok)
            gaps = r.get("itl_ms") or []
            if gaps:
                events.extend((tok + np.cumsum(np.asarray(gaps, dtype=float)) * 1e6).tolist())
        if answered and isinstance(end, int):
            events.append(end)
    if not spans:
        return 0.0
    first_sent = min(s for s, _ in spans)
    ev = np.unique(np.asarray([first_sent, *events], dtype=float))
    if len(ev) < 2:
        return 0.0
    gaps = np.diff(ev)
    starts, ends = np.asarray([s for s, _ in spans], dtype=float), np.asarray([e for _, e in spans], dtype=float)
    for i in np.argsort(gaps)[::-1][:8]:  # the longest gaps first: a gap counts only with a request outstanding
        a, b = ev[i], ev[i + 1]
        if np.any((starts <= a) & (ends >= b)):
            return float(gaps[i] / 1e9)
    return 0.0


def assess(*, records: list[dict], requests: dict, load: dict, loadgen: dict | None, quality: dict,
           sim_io: dict | None, hang_s: float = HANG_S) -> dict:
    """The cell's checks and, from them, ``invalid_because`` / ``degraded_because`` (names of failed checks)."""
    checks: dict[str, dict] = {}
    loadgen = loadgen or {}
    bound = client_bound(loadgen)
    checks["client_not_bound"] = _check(
        "measurement", bound, f"client CPU <= {CLIENT_CPU_PCT:g} % of a core, send lag p50 <= {CLIENT_SEND_LAG_P50_MS:g} ms",
        None if bound is None else not bound["bound"],
        f"the load generator could not keep up ({(bound or {}).get('why')})")
    pattern = (load.get("pattern") or DEFAULT_PATTERN).get("kind", DEFAULT_PATTERN["kind"])
    conc = load.get("concurrency")
    if pattern == "closed" and isinstance(conc, int) and conc > 0 and records:
        want = min(conc, int(load.get("max_requests") or conc))  # a capped load cannot have more in flight
        peak = peak_in_flight(records)
        checks["achieved_concurrency"] = _check(
            "measurement", peak, f">= {ACHIEVED_CONCURRENCY_MIN:.0%} of {want} in flight",
            peak >= ACHIEVED_CONCURRENCY_MIN * want,
            f"at most {peak} of {conc} requests were ever in flight (client or connection limit)")
    collector_ok = quality.get("collector_ok")
    checks["telemetry_collected"] = _check(
        "measurement", collector_ok, "collector ran and summarised", bool(collector_ok),
        quality.get("collector_note") or "the telemetry collector died")
    silence = server_silence_s(records)
    checks["server_not_silent"] = _check(
        "server", round(silence, 3), f"< {hang_s:g} s without a byte while requests wait", silence < hang_s,
        f"the server sent nothing for {silence:.1f} s with requests outstanding (a hang)")
    alignment = quality.get("alignment")
    hung = silence >= hang_s  # a stopped server does not answer its metrics scrapes either: its fault
    if alignment is not None:
        gap = alignment < ALIGNMENT_INVALID_BELOW and not hung
        checks["telemetry_coverage"] = _check(
            "measurement", alignment, f">= {ALIGNMENT_INVALID_BELOW:.0%} of windows", not gap,
            f"telemetry covers only {alignment:.0%} of the windows")
    if sim_io is not None:
        n_bad = int(sim_io.get("tier2_io_errors") or 0) + int(sim_io.get("tier2_verify_failures") or 0)
        checks["simulator_io"] = _check(
            "measurement", n_bad, "0 tier-2 I/O errors or verify failures", n_bad == 0,
            f"the simulator's tier-2 file I/O failed ({int(sim_io.get('tier2_io_errors') or 0)} errors, "
            f"{int(sim_io.get('tier2_verify_failures') or 0)} verify failures)")
    n, n_err = int(requests.get("n_requests") or 0), int(requests.get("n_errors") or 0)
    classes = ", ".join(f"{k} {v}" for k, v in sorted((requests.get("error_classes") or {}).items()))
    checks["server_errors"] = _check(
        "server", n_err, "0 failed requests", n_err == 0,
        f"latency percentiles cover {n - n_err} of {n} requests; {n_err} failed ({classes})")
    invalid = [k for k, c in checks.items() if c["kind"] == "measurement" and c["passed"] is False]
    degraded = [k for k, c in checks.items() if c["kind"] == "server" and c["passed"] is False]
    return {"checks": checks, "invalid_because": invalid, "degraded_because": degraded}


def reasons(checks: dict, names: list[str]) -> str:
    """One line: the failed checks' explanations."""
    return "; ".join(checks[n].get("why") or n for n in names if n in checks)
