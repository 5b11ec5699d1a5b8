"""Cells called ok that are not (issue 25): a failed measurement is `invalid`, a misbehaving server
`degraded` with its reason, and the simulator's own tier-2 I/O errors are errors, not bytes."""

import asyncio
import errno
import json
import os
import signal
import time

import psutil

from kvharness.measure import validity
from kvharness.analysis.run import invalid_cells

MS = 1_000_000


def closed_load(concurrency):
    return {"concurrency": concurrency, "pattern": {"kind": "closed"}}


def request(sent_ms, end_ms, rc=0, tokens_ms=(), error_class=None):
    """A record of the load generator's schema; token times in ms after the send."""
    tok = [sent_ms + t for t in tokens_ms]
    return {"sent_ns": int(sent_ms * MS), "end_ns": int(end_ms * MS), "rc": rc, "error_class": error_class,
            "first_byte_ns": int(tok[0] * MS) if tok else None, "first_token_ns": int(tok[0] * MS) if tok else None,
            "itl_ms": [b - a for a, b in zip(tok, tok[1:])]}


def assess(records, concurrency=2, loadgen=None, quality=None, sim_io=None, errors=0):
    n = len(records)
    return validity.assess(records=records, requests={"n_requests": n, "n_errors": errors, "error_classes": {}},
                           load=closed_load(concurrency), loadgen=loadgen or {"client_bound": False, "selfcheck_windows": 4, "client_cpu_pct": 10.0},
                           quality=quality or {"collector_ok": True, "alignment": 1.0}, sim_io=sim_io, hang_s=1.0)


def healthy(n=20):
    """Two users back to back, a token every 10 ms: the server is never silent."""
    return [request(i * 50, i * 50 + 50, tokens_ms=range(5, 50, 10)) for i in range(n) for _ in range(2)]


def test_a_healthy_closed_loop_passes_every_check():
    out = assess(healthy())
    assert out["invalid_because"] == [] and out["degraded_because"] == []
    assert all(c["passed"] is not False for c in out["checks"].values())
    assert out["checks"]["achieved_concurrency"]["value"] == 2


def test_a_client_bound_load_is_invalid_not_ok():
    # the concurrency-100000 cell: the load generator's self-check said client-bound, 73 % timed out
    out = assess(healthy(), concurrency=100_000, errors=30,
                 loadgen={"client_bound": True, "client_bound_windows": 150, "selfcheck_windows": 166,
                          "client_cpu_pct": 97.0, "send_lag_ms_p50": 900.0})
    assert "client_not_bound" in out["invalid_because"]
    assert "could not keep up (client CPU 97 % of a core, send lag p50 900.0 ms)" in validity.reasons(
        out["checks"], out["invalid_because"])


def test_one_late_send_on_a_busy_machine_is_not_a_failed_measurement():
    # the load generator's own flag fires on a 5.2 ms send-lag p99 over 32 requests
    out = assess(healthy(), loadgen={"client_bound": True, "client_bound_windows": 0, "selfcheck_windows": 3,
                                     "client_cpu_pct": 9.8, "send_lag_ms_p50": 0.7})
    assert out["invalid_because"] == [] and out["checks"]["client_not_bound"]["value"]["flag"] is True
    # 80 users started at once on a busy 2-core box: every window flagged, the client at 13 % CPU
    out = assess(healthy(), loadgen={"client_bound": True, "client_bound_windows": 2, "selfcheck_windows": 2,
                                     "client_cpu_pct": 13.4, "send_lag_ms_p50": 4.4})
    assert out["invalid_because"] == []


def test_far_fewer_requests_in_flight_than_asked_is_invalid():
    # 8 users asked for, a connection limit lets only one request out at a time
    records = [request(i * 10, i * 10 + 10, tokens_ms=(5,)) for i in range(40)]
    out = assess(records, concurrency=8)
    assert out["checks"]["achieved_concurrency"]["value"] == 1
    assert "achieved_concurrency" in out["invalid_because"]


def test_a_silent_server_is_degraded_and_a_slow_queue_is_not():
    # every stream stops for 3 s at once (SIGSTOP): a hang
    hung = [request(0, 3200, tokens_ms=(10, 20, 3020, 3030)), request(0, 3200, tokens_ms=(15, 3025))]
    out = assess(hung)
    assert out["degraded_because"] == ["server_not_silent"] and out["invalid_because"] == []
    assert 2.9 < out["checks"]["server_not_silent"]["value"] < 3.1
    # one request waits 3 s in the queue while the other keeps streaming: no hang
    queued = [request(0, 3100, tokens_ms=(3000, 3050)), request(0, 3100, tokens_ms=range(10, 3100, 100))]
    assert "server_not_silent" not in assess(queued)["degraded_because"]


def test_server_errors_degrade_and_name_the_partial_percentiles():
    out = validity.assess(records=healthy(), requests={"n_requests": 100, "n_errors": 43, "error_classes": {"http_500": 43}},
                          load=closed_load(2), loadgen={}, quality={"collector_ok": True, "alignment": 1.0}, sim_io=None)
    assert out["degraded_because"] == ["server_errors"]
    assert "cover 57 of 100 requests" in validity.reasons(out["checks"], ["server_errors"])


def test_telemetry_lost_and_simulator_io_errors_are_invalid():
    out = assess(healthy(), quality={"collector_ok": False, "alignment": 0.2}, sim_io={"tier2_io_errors": 3})
    assert set(out["invalid_because"]) == {"telemetry_collected", "telemetry_coverage", "simulator_io"}


def test_tier2_enospc_is_counted_as_an_error_never_as_bytes_written(tmp_path):
    from kvharness.sim.tier2 import Tier2Store

    async def run():
        st = Tier2Store(str(tmp_path), block_bytes=2 << 20, scale=1 / 32, capacity_blocks=8, loop=asyncio.get_running_loop())

        def full(_items):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        st._write_many_sync = full  # the disk under tier 2 is full
        try:
            slots = [st.alloc_slot() for _ in range(3)]
            futs = [st.write_block(s, 7 + s) for s in slots]
            await asyncio.gather(*set(futs))
            await st.read_blocks([(s, 7 + s) for s in slots], futs)
            return st
        finally:
            st.close()

    st = asyncio.run(run())
    assert st.bytes_written == 0 and st.io_errors["write"] == 3
    assert st.verify_failures == 3  # what was never written does not read back


def test_invalid_cells_are_skipped_by_analysis_with_their_reason(tmp_path):
    for name, status in (("a_c1", "ok"), ("a_c2", "invalid"), ("a_c3", "degraded")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": status, "reason": "client-bound"}))
    assert invalid_cells(sorted(tmp_path.iterdir())) == {"a_c2": "client-bound"}


def test_a_server_stopped_mid_load_is_not_ok(make_cell, start_cell, tmp_path):
    spec = make_cell(role="A", concurrency=2, duration_s=3.0, request_timeout_s=30.0)
    spec["quality"] = {"hang_s": 1.0}
    proc, out, kids = start_cell(spec, ["kvharness sim", "kvharness loadgen"])
    sim = next(k for k in kids if "kvharness sim" in " ".join(k.cmdline()))
    metrics = out.with_name(out.name + ".tmp") / "metrics.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not metrics.exists() or metrics.stat().st_size == 0):
        time.sleep(0.02)
    sim.send_signal(signal.SIGSTOP)
    time.sleep(2.0)
    sim.send_signal(signal.SIGCONT)
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stdout.read()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "degraded", summary.get("checks")
    assert "server_not_silent" in summary["degraded_because"]
    assert "a hang" in summary["degraded_reason"]
    assert summary["checks"]["server_not_silent"]["value"] >= 1.5
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in kids if p.pid == sim.pid)


def test_the_simulators_tier2_io_errors_reach_the_cell_through_its_scrapes():
    from kvharness.telemetry.prom import DeltaState, map_deltas, parse_body

    def body(n):
        return ("# TYPE kvsim_tier2_io_errors_total counter\n"
                f'kvsim_tier2_io_errors_total{{kind="write"}} {n}\nkvsim_tier2_io_errors_total{{kind="read"}} 1\n')

    st = DeltaState()
    st.update(parse_body(body(0)))
    rec = map_deltas({"sim": st.update(parse_body(body(600)))}, None)
    assert rec["sim"]["tier2_io_errors"] == 600  # 600 new write errors, no new read error
