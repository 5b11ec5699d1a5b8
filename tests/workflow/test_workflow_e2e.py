"""The whole pipeline through Snakemake on the simulated stacks (slow: real processes, real load)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]

pytestmark = pytest.mark.slow


PLANTED = "hf_e2ePlantedToken987654321"


def snakemake(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_TOKEN": PLANTED, "MY_API_KEY": PLANTED}
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(TINY), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    proc = snakemake(workdir, "--cores", "2", "results/H8/summary.csv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_hero_table_has_both_stacks_without_errors(finished_run):
    rows = {r["role"]: r for r in read_csv(finished_run / "results/H8/summary.csv")}
    assert set(rows) == {"A", "B"}
    for row in rows.values():
        assert int(row["n_ok"]) > 0
        assert int(row["n_errors"]) == 0
        assert float(row["ttft_ms_p99"]) >= float(row["ttft_ms_p50"]) > 0
        assert int(row["u_work"]) >= 1
        assert row["memory_budget_bytes"] == rows["A"]["memory_budget_bytes"]
    assert rows["A"]["vs_A_ttft_ms_p99_pct"] == "" and rows["B"]["vs_A_ttft_ms_p99_pct"] != ""
    assert rows["B"]["engine_diff_vs_A"] == ""  # A/B parity: same engine settings but for the pool
    png = finished_run / "results/H8/hero.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cell_folders_hold_records_and_provenance(finished_run):
    cell = finished_run / "results/H0/cells/sim-B_c2"
    for name in ("metrics.jsonl", "sysmon.jsonl", "cell.json", "summary.json", "provenance.json", "server.log"):
        assert (cell / name).is_file(), name
    assert not list((finished_run / "results/H0/cells").glob("*.tmp"))


def test_cell_logs_end_with_the_outcome_line_and_export_reads_back(finished_run):
    import pandas as pd

    log_lines = (finished_run / "results/H0/logs/sim-B_c2.log").read_text().splitlines()
    assert re.search(r"cell H0/sim-B_c2 (ok|degraded): requests \d+ ok / 0 errors, TTFT p50 [\d.]+ ms p99 [\d.]+ ms, "
                     r"tier-2 ", log_lines[-1]), log_lines[-3:]
    out = finished_run / "requests-H0.parquet"
    proc = subprocess.run([sys.executable, "-m", "kvharness", "export", "--results", str(finished_run / "results"),
                           "--hyp", "H0", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(out)
    cells = sorted((finished_run / "results/H0/cells").glob("sim-*"))
    per_cell = {c.name: len((c / "metrics.jsonl").read_text().splitlines()) for c in cells}
    assert len(df) == sum(per_cell.values()) and df.groupby("cell").size().to_dict() == per_cell
    # the swept concurrency is the `concurrency` column (export leaves out sweep_concurrency, equal to it)
    assert set(df["concurrency"]) == {1, 2, 128} and "sweep_concurrency" not in df and df["lat_ttft_ms"].notna().any()


def test_planted_secret_is_nowhere_in_results_or_logs(finished_run):
    leaks = [str(p) for p in finished_run.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert not leaks


def test_complete_run_has_nothing_to_do(finished_run):
    t0 = time.monotonic()
    proc = snakemake(finished_run, "-n", "results/H8/summary.csv")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 60  # a hang guard, not a speed target (benchmarks/plan_dryrun.py measures it)


def _dry_run_after_edit(finished_run, relpath: str) -> tuple[int, str]:
    """``snakemake -n`` for H8 after appending a comment to ``relpath`` (Snakemake compares checksums of
    inputs, so the edit must change the content); the file and its mtime are restored afterwards."""
    code = ROOT / relpath
    original = code.read_bytes()
    stat = code.stat()
    try:
        code.write_bytes(original + b"\n# an edit\n")
        proc = snakemake(finished_run, "-n", "results/H8/summary.csv")
        return proc.returncode, proc.stdout + proc.stderr
    finally:
        code.write_bytes(original)
        os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_h8_analysis_reruns_only_h8_analysis(finished_run):
    _, out = _dry_run_after_edit(finished_run, "src/kvharness/analysis/h8.py")
    assert "analyze_H8" in out
    assert "measure_cell" not in out and "analyze_H0" not in out


def test_editing_the_simulator_reruns_no_analysis(finished_run):
    # issue 26: an analysis rule's code inputs are its import closure; it must not reach the simulator
    # (tests/analysis/test_code_inputs.py checks every hypothesis; this is Snakemake's own answer).
    rc, out = _dry_run_after_edit(finished_run, "src/kvharness/sim/engine.py")
    assert rc == 0, out[-2000:]
    assert "analyze_" not in out and "Nothing to be done" in out


def test_ctrl_c_during_a_cell_leaves_no_process_and_no_complete_folder(tmp_path):
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group: snakemake and its job.
    proc = subprocess.Popen([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(TINY), "--cores", "1",
                             "results/H0/cells/sim-B_c128"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    tmp_cell = tmp_path / "results/H0/cells/sim-B_c128.tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_cell / "metrics.jsonl").exists():
        time.sleep(0.1)
    assert (tmp_cell / "metrics.jsonl").exists(), "the cell never started its load"
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("sim" in " ".join(p.cmdline()) for p in family if p.is_running())
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert time.monotonic() - t0 < 10.5
    proc.wait(timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    assert not (tmp_path / "results/H0/cells/sim-B_c128").exists()
    kept = list((tmp_path / "results/H0/cells").glob("sim-B_c128.failed-*"))
    assert kept and "interrupted" in (kept[0] / "reason.txt").read_text()


def _measured(proc) -> set[str]:
    import re

    return set(re.findall(r"wildcards: hyp=(H\d+), cell=([A-Za-z0-9_-]+)", proc.stdout + proc.stderr))


def test_a_changed_uwork_remeasures_exactly_its_cells_and_an_unchanged_one_none(finished_run):
    code = ROOT / "src/kvharness/analysis/knee.py"
    original = code.read_bytes()
    before = {r["stack"]: r["u_work_used"] for r in read_csv(finished_run / "results/H0/uwork.csv")}
    try:
        # stability from the point values instead of the requests' bounds: tiny's short H0 cells (no p99
        # bound below 299 requests) leave every step undecided and U_work at the lowest step; the point
        # rule decides them, so U_work moves
        edited = original.replace(b'samples = step.get("_ttft_ms")', b"samples = None")
        assert edited != original
        code.write_bytes(edited)
        proc = snakemake(finished_run, "--cores", "2", "results/H8/summary.csv")
        assert proc.returncode == 0, proc.stderr[-3000:]
        after = {r["stack"]: r["u_work_used"] for r in read_csv(finished_run / "results/H0/uwork.csv")}
        assert after != before, (before, after)
        measured = _measured(proc)
        if min(map(int, after.values())) == min(map(int, before.values())):  # H8 runs at uwork_min: unchanged
            assert measured == set()
            return
        assert measured and {h for h, _ in measured} == {"H8"}  # H0's cells are never re-measured
        for _, cell in measured:  # each re-measured cell ran at the new U_work (H8: both stacks at uwork_min)
            spec = json.loads((finished_run / f"results/H8/cells/{cell}/cell.json").read_text())
            source = spec["load"]["concurrency_source"]
            assert source["from"] == "results/H0/uwork.csv" and spec["load"]["concurrency"] == source["value"]
            assert source["value"] == min(int(v) for v in after.values())
        h8_cells = {p.name for p in (finished_run / "results/H8/cells").iterdir() if "." not in p.name}
        assert {c for _, c in measured} == h8_cells  # every H8 cell used the old U_work, so all of them
    finally:
        code.write_bytes(original)  # a new mtime, so Snakemake sees the change back
    proc = snakemake(finished_run, "--cores", "2", "results/H8/summary.csv")  # back to the old U_work
    assert proc.returncode == 0
    assert {r["stack"]: r["u_work_used"] for r in read_csv(finished_run / "results/H0/uwork.csv")} == before
    try:
        code.write_bytes(original + b"\n# an edit that leaves U_work as it is\n")
        proc = snakemake(finished_run, "--cores", "2", "results/H8/summary.csv")
        assert proc.returncode == 0
        assert "analyze_H0" in proc.stdout + proc.stderr
        assert _measured(proc) == set()
    finally:
        code.write_bytes(original)


def test_a_toy_hypothesis_runs_end_to_end_through_the_generated_rule(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(f"""
hypothesis_modules: [{Path(__file__).with_name('toy_hypothesis.py')}]
hypotheses:
  H42:
    stacks: [A]
    profile: spill
    sweep: {{context_tokens: [64, 128]}}
    load:
      concurrency: 2
      workload: {{kind: fixed_context, context_tokens: 64, output_tokens: 4}}
      duration_s: 1
""")
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), f"--configfile={cfg}", "--cores", "1",
                           "results/H42/summary.csv"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(tmp_path / "results/H42/summary.csv")
    assert [(r["stack"], r["ctx"]) for r in rows] == [("sim-A", "64"), ("sim-A", "128")]
    assert all(int(r["n_ok"]) > 0 for r in rows)
    verdict = json.loads((tmp_path / "results/H42/verdict.json").read_text())
    n = sum(int(r["n_ok"]) for r in rows)
    # one rep per point: the common reproducibility gates are n/a, and the verdict says what it does not cover
    assert verdict["verdict"] == f"{n} requests succeeded. Does not cover: launch-to-launch variation (one repetition per point)."
    assert verdict["measured"] == f"{n} requests succeeded." and verdict["gate_status"] == "incomplete"
    assert verdict["gates"][0]["passed"] is True and verdict["cell_status"] == {"ok": 2}
    assert (tmp_path / "results/H42/toy.png").is_file()
