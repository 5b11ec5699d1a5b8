"""A full disk under the cell folders mid-cell (issue 18 case 3): failed with a reason, no traceback,
completed cells untouched. Needs a small tmpfs (root); skipped with the reason when it cannot mount."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvharness.records import read_jsonl
from kvharness.measure.cell import run_cell


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a small filesystem")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(res.stderr or res.stdout).strip() or res.returncode}); "
                    "run as root or with CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> int:
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                written += fh.write(chunk)
        except OSError:
            pass
        # the last few bytes, so not even a small record fits
        try:
            while True:
                written += fh.write(b"\0" * 512)
        except OSError:
            pass
    return written


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_disk_full_mid_cell_is_a_failed_cell_with_reason_and_no_traceback(make_cell, tmp_path, small_fs):
    cells = small_fs / "cells"
    done = cells / "sim-A_done"
    run_cell(make_cell(role="A", concurrency=1, duration_s=0.5), done)
    before = snapshot(done)

    spec = make_cell(role="A", concurrency=2, duration_s=20.0)
    spec["cell"] = "sim-A_full"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = cells / "sim-A_full"
    proc = subprocess.Popen([sys.executable, "-m", "kvharness", "cell", "--spec", str(spec_path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = cells / "sim-A_full.tmp" / "metrics.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not metrics.exists() or metrics.stat().st_size < 5000):
        time.sleep(0.05)
    assert metrics.exists(), "the load never started"
    filler = small_fs / "filler"
    fill(filler)
    t_full = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t_full < 15, "the load must stop at the failed write, not run its 20 s"
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    kept = sorted(cells.glob("sim-A_full.failed-*"))
    assert len(kept) == 1 and not out.exists() and not (cells / "sim-A_full.tmp").exists()
    reason = (kept[0] / "reason.txt").read_text()  # room for it was reserved before the load
    assert "could not write its records (disk full?)" in reason, reason
    assert json.loads((kept[0] / "summary.json").read_text())["status"] == "failed"
    assert (kept[0] / "provenance.json").exists()
    assert not list(kept[0].glob("*.tmp")) and not list(kept[0].glob("*.part")) and not list(kept[0].glob(".reserve*"))
    records, torn = read_jsonl(kept[0] / "metrics.jsonl")  # every line parses but a counted cut last one
    assert records and torn in (0, 1)
    filler.unlink()
    assert snapshot(done) == before, "a completed cell changed"
    if (kept[0] / "summary.json").exists():
        summary = json.loads((kept[0] / "summary.json").read_text())
        assert summary["status"] == "failed"


def test_a_full_tier2_disk_is_counted_as_simulator_io_errors_and_the_cell_invalid(make_cell, start_cell, small_fs):
    # issue 25: the simulator swallowed ENOSPC on tier-2 writes, counted them as bytes written, and the cell
    # was ok. Tier 2 on the 8 MiB filesystem, filled once the load runs: every write past it fails.
    spec = make_cell(role="B", concurrency=4, duration_s=3.0, request_timeout_s=10.0, context_tokens=2048)
    spec["tier2_root"] = str(small_fs / "tier2")
    spec["sim"]["block_bytes_scale"] = 0.05  # 128 MiB of tier 2 -> 6.4 MiB of file: fits before the fill
    spec["tiers"].update({"tier0_bytes": 160 << 20, "tier1_bytes": 320 << 20, "tier2_bytes": 128 << 20})
    proc, out, _ = start_cell(spec, ["kvharness sim", "kvharness loadgen"])
    # tier 2 is written through as blocks are registered (docs/simulator.md): the first request's 64 blocks
    # fill its 64 slots, later ones overwrite in place, so the disk is filled as soon as the load starts
    fill(small_fs / "filler")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    check = summary["checks"]["simulator_io"]
    assert check["passed"] is False and check["value"] > 0, check
    assert summary["status"] == "invalid" and "simulator_io" in summary["invalid_because"]
    assert "tier-2 file I/O failed" in summary["reason"]
    assert "kvsim: tier-2 write of" in (out / "server.log").read_text()
