"""Harness faults: signals, busy ports, a full tier-2 disk, a dying collector, a killed load generator."""

import json
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from kvharness.records import read_jsonl
from kvharness.measure.cell import CellFailed, run_cell
from kvharness.stacks.launcher import RunningStack, plan_launch
from kvharness.stacks.names import template_names


def descendants_alive(procs):
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_cell_stops_every_child_within_10s(make_cell, start_cell, tmp_path, sig):
    spec = make_cell(concurrency=4, duration_s=30.0)
    proc, out, kids = start_cell(spec, ["kvharness sim", "kvharness sysmon", "kvharness loadgen"])
    pids = {k.pid for k in kids}
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not descendants_alive(alive), f"still alive after {time.monotonic() - t0:.1f} s: {pids}"
    proc.wait(timeout=15)
    assert proc.returncode != 0
    assert not out.exists()
    kept = list(out.parent.glob(out.name + ".failed-*"))
    assert kept and f"interrupted (signal {sig.name})" in (kept[0] / "reason.txt").read_text()


def test_late_signals_while_the_folder_is_written_still_leave_reason_txt(make_cell, start_cell, tmp_path):
    # SIGKILL of Snakemake: the watch thread's SIGTERM, then the parent-death signal; the second used to
    # land after the teardown had restored the default handler, killing the runner between summary.json
    # and reason.txt and leaving <cell>.tmp/. Here SIGTERMs keep coming until the runner exits.
    spec = make_cell(concurrency=2, duration_s=30.0)
    proc, out, kids = start_cell(spec, ["kvharness sim", "kvharness loadgen"])
    while proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
    assert proc.returncode != 0  # 1, or the storm's SIGTERM once the folder was final
    assert not out.with_name(out.name + ".tmp").exists()
    kept = list(out.parent.glob(out.name + ".failed-*"))
    assert len(kept) == 1 and "interrupted (signal SIGTERM)" in (kept[0] / "reason.txt").read_text()
    assert json.loads((kept[0] / "summary.json").read_text())["status"] == "failed"
    assert not list(kept[0].glob(".reserve*"))


def test_port_in_use_is_a_clear_error_before_launch(make_cell, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = make_cell()
        spec["stack"]["port"] = port
        with pytest.raises(CellFailed, match=f"127.0.0.1:{port} is already in use"):
            run_cell(spec, tmp_path / "cells" / "busy")


def test_tier2_disk_full_is_a_clear_error(make_cell, tmp_path):
    spec = make_cell()
    spec["tiers"]["tier2_bytes"] = 2**60  # an exbibyte
    spec["sim"]["block_bytes_scale"] = 1.0
    with pytest.raises(CellFailed, match=r"tier-2 disk full: .* free but profile 'comfy' needs 1024 PiB|tier-2 disk full"):
        run_cell(spec, tmp_path / "cells" / "full")
    kept = list((tmp_path / "cells").glob("full.failed-*"))
    assert "shrink profiles.comfy.tier2" in (kept[0] / "reason.txt").read_text()


def test_a_dying_collector_marks_the_cell_invalid(make_cell, start_cell, tmp_path):
    spec = make_cell(concurrency=2, duration_s=3.0)
    proc, out, kids = start_cell(spec, ["kvharness sysmon", "kvharness loadgen"])
    collector = next(k for k in kids if "kvharness sysmon" in " ".join(k.cmdline()))
    collector.kill()
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stdout.read()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "invalid"  # a telemetry gap: the measurement failed, not the server
    assert "telemetry_collected" in summary["invalid_because"] and summary["reason"]


def test_a_killed_loadgen_leaves_valid_lines(make_cell, tmp_path):
    spec = make_cell()
    plan = plan_launch(spec["stack"], template_names(spec, tmp_path / "t2"), tmp_path)
    (tmp_path / "t2").mkdir()
    load = {"base_url": plan.base_url, "model": spec["served_model_name"],
            "pattern": {"kind": "closed", "concurrency": 8},
            "workload": {"kind": "fixed_context", "context_tokens": 64, "output_tokens": 8}, "duration_s": 30}
    (tmp_path / "load.json").write_text(json.dumps(load))
    metrics = tmp_path / "metrics.jsonl"
    with RunningStack(plan):
        lg = subprocess.Popen([sys.executable, "-m", "kvharness", "loadgen", "--spec", str(tmp_path / "load.json"),
                               "--out", str(metrics)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not metrics.exists() or metrics.stat().st_size < 2000):
            time.sleep(0.05)
        lg.kill()
        lg.wait()
    records, truncated = read_jsonl(metrics)  # raises on any malformed line but a truncated last one
    assert len(records) >= 3 and truncated in (0, 1)
    assert all(r["rc"] == 0 and r["lat_ttft_ms"] > 0 for r in records)
