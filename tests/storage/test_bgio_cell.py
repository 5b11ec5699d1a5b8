"""fio inside a real cell: its report is kept, and killing the cell while fio runs leaves no fio behind."""

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from kvharness.plan.config import expand_cells, validate_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed"), pytest.mark.slow]


def noisy_cell(tmp_path: Path, duration_s: float) -> dict:
    cfg = yaml.safe_load((ROOT / "configs/config.yaml").read_text())
    cfg["tier2_root"] = str(tmp_path / "tier2")
    cfg["background_io"] = {"size": "8MiB", "numjobs": 2, "iodepth": 8}
    h = copy.deepcopy(cfg["hypotheses"]["H4A"])
    h["reps"] = 1
    h["sweep"] = {"background_io": ["on"]}
    h["load"].update(concurrency=2, duration_s=duration_s, min_ok_requests=None)
    h["load"]["workload"]["context_tokens"] = 256
    cfg["hypotheses"] = {"H4A": h}
    return expand_cells(validate_config(cfg), "H4A")[0]


def fio_procs(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if cmd and Path(cmd[0]).name == "fio" and any(marker in a for a in cmd):
            out.append(p)
    return out


def timed_fio(marker: str) -> list[psutil.Process]:
    """The timed job's fio processes (the main one and its forked jobs), not the file layout's."""
    out = []
    for p in fio_procs(marker):
        try:
            if "--time_based" in p.cmdline():
                out.append(p)
        except psutil.Error:
            continue
    return out


def start_cell(tmp_path: Path, duration_s: float) -> tuple[subprocess.Popen, dict]:
    spec = noisy_cell(tmp_path, duration_s)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "kvharness", "cell", "--spec", str(tmp_path / "spec.json"),
                             "--out", str(tmp_path / "cells" / spec["cell"])], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, spec


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_the_cell_while_fio_runs_leaves_no_fio(tmp_path, sig):
    proc, spec = start_cell(tmp_path, duration_s=60)
    marker = str(tmp_path / "tier2")
    try:
        # fio installs its signal handlers (the ones that write its report) before it forks its job
        # processes: wait for the jobs, or a signal that lands while fio is still parsing kills it silently
        deadline = time.monotonic() + 40
        while len(timed_fio(marker)) < 1 + spec["background_io"]["numjobs"]:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "fio never started its jobs"
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    time.sleep(0.2)
    assert fio_procs(marker) == []
    failed = next((tmp_path / "cells").glob(f"{spec['cell']}.failed-*"))
    assert "interrupted" in (failed / "reason.txt").read_text()
    assert (failed / "fio.json").is_file()  # what fio measured is kept, also in a failed cell
    assert json.loads((failed / "summary.json").read_text())["background_io"]["enabled"] is True


def test_finished_noisy_cell_keeps_fio_report(tmp_path):
    proc, spec = start_cell(tmp_path, duration_s=1.5)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err.decode()[-2000:]
    cell = tmp_path / "cells" / spec["cell"]
    from kvharness.stacks.bgio import cell_fio_row

    row = cell_fio_row(cell)
    assert row["fio_engine"] in ("libaio", "io_uring", "posixaio", "psync") and row["fio_read_iops"] > 0
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["capacity"]["verified"] is True
    # cold-start check 2 ran on the collector's baseline scrape: a fresh stack has no hits
    assert summary["cold_start"]["checks"]["hits_at_baseline"] == 0 and summary["cold_start"]["verified"] is True
    assert summary["tier2_file_bytes"] == 0  # fio's files are removed, never counted as tier-2 KV bytes
    assert fio_procs(str(tmp_path / "tier2")) == []
