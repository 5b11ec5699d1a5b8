"""The workflow process dies, or two workflows run at once (issue 18): real Snakemake runs (slow)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
RUN_PARTS = ("kvharness sim", "kvharness loadgen", "kvharness sysmon", "run_cell")

pytestmark = pytest.mark.slow


def tiny_config(tmp_path: Path, duration_s: float) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["hypotheses"]["H0"]["load"]["duration_s"] = duration_s
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, config: Path, *args: str, **kw):
    return [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config), *args]


def of_this_run(procs):
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and any(n in " ".join(p.cmdline()) for n in RUN_PARTS):
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def test_sigkill_of_snakemake_mid_cell_leaves_nothing_running_and_a_rerun_measures_once(tmp_path):
    work = tmp_path / "run"
    config = tiny_config(tmp_path, duration_s=2.0)
    target = "results/H0/cells/sim-B_c2"
    proc = subprocess.Popen(snakemake(work, config, "--cores", "1", target), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = work / (target + ".tmp") / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not metrics.exists() or metrics.stat().st_size < 1000):
        time.sleep(0.05)
    assert metrics.exists(), "the cell never started its load"
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("kvharness sim" in " ".join(p.cmdline()) for p in of_this_run(family))
    proc.kill()  # SIGKILL: no handler, no cleanup by Snakemake
    t_kill = time.monotonic()
    proc.wait()
    while time.monotonic() - t_kill < 3.0 and of_this_run(family):
        time.sleep(0.05)
    left = of_this_run(family)
    assert not left, f"alive {time.monotonic() - t_kill:.1f} s after the kill: {[p.cmdline()[:4] for p in left]}"
    cells = work / "results/H0/cells"
    kept = sorted(cells.glob("sim-B_c2.failed-*"))
    assert len(kept) == 1 and not (cells / "sim-B_c2").exists() and not (cells / "sim-B_c2.tmp").exists()
    assert (kept[0] / "reason.txt").read_text().strip() == "workflow process died"
    assert (kept[0] / "metrics.jsonl").stat().st_size > 0  # what was measured is kept

    # Snakemake's own hints, at once: unlock, rerun the incomplete job
    unlock = subprocess.run(snakemake(work, config, "--unlock"), capture_output=True, text=True, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = subprocess.run(snakemake(work, config, "--cores", "1", "--rerun-incomplete", target),
                           capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((cells / "sim-B_c2" / "summary.json").read_text())
    assert summary["status"] in ("ok", "degraded") and summary["requests"]["n_ok"] > 0
    assert sorted(cells.glob("sim-B_c2.failed-*")) == kept, "the rerun measured once and failed nothing"
    log = (work / "results/H0/logs/sim-B_c2.log").read_text()
    assert log.count(": launching sim-B") == 1  # Snakemake restarts the job's log: this run launched once


def test_two_workflows_in_two_directories_never_measure_at_the_same_time(tmp_path):
    config = tiny_config(tmp_path, duration_s=1.0)
    targets = ["results/H0/cells/sim-A_c1"]
    dirs = [tmp_path / "one", tmp_path / "two"]
    env = {**os.environ, "KVHARNESS_LOCK": str(tmp_path / "machine.lock")}
    procs = [subprocess.Popen(snakemake(d, config, "--cores", "1", *targets), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for d in dirs]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    spans = []
    for d in dirs:
        for t in targets:
            m = json.loads((d / t / "cell.json").read_text())["measurement"]
            assert m["lock"]["path"] == env["KVHARNESS_LOCK"]
            spans.append((m["started_utc"], m["finished_utc"], f"{d.name}/{t}"))
    spans.sort()
    for (s1, f1, a), (s2, f2, b) in zip(spans, spans[1:]):
        assert f1 <= s2, f"{a} ({s1}..{f1}) overlaps {b} ({s2}..{f2})"
    logs = "".join(p.read_text() for d in dirs for p in (d / "results/H0/logs").glob("*.log"))
    assert "waiting for the benchmark lock" in logs and "held by" in logs  # the holder may not have written its pid yet
    consoles = "".join(outs)  # ... and where the user looks: Snakemake's console shows the wait and its end
    assert "waiting for the benchmark lock" in consoles and "got the benchmark lock after" in consoles
