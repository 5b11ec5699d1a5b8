"""A two-cell smoke sweep under a real single-node SLURM (Debian slurm-wlm, ci/slurm-localhost.sh)
through snakemake-executor-plugin-slurm with profiles/slurm: both cells are submitted at once, and
SLURM runs them on the node one after another (each measurement job is --exclusive and asks for the GPU).

Opt-in (it takes ~2 minutes and needs root): KVH_SLURM_SMOKE=1 .venv/bin/python -m pytest
tests/workflow/test_slurm_localhost.py. ci/slurm-localhost.sh install/start set the machine up."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("KVH_SLURM_SMOKE") != "1", reason="opt-in: KVH_SLURM_SMOKE=1"),
    pytest.mark.skipif(shutil.which("slurmctld") is None, reason="slurm-wlm not installed"),
    pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                       reason="EXTRAS=test,slurm ./setup.sh"),
]


def _squeue_times(job_ids):
    out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i %S %e %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        jid, start, end, state = line.split()
        rows[jid] = (datetime.fromisoformat(start), datetime.fromisoformat(end), state)
    return rows


def test_two_cells_run_one_after_another_on_one_exclusive_node(tmp_path):
    subprocess.run([str(ROOT / "ci/slurm-localhost.sh"), "start"], check=True, timeout=60)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/H0/summary.csv", "-s", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(ROOT / "ci/slurm-smoke.yaml"),
         # docs/slurm.md's command as written: the shipped profile, no resource overrides (the localhost node
         # is declared as big as a cell asks, one counted GPU: ci/slurm-localhost.sh)
         "--workflow-profile", str(ROOT / "profiles/slurm"), "--slurm-status-command", "squeue"],
        capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: .*rule_measure_cell", log)
    assert len(submitted) == 2
    # both cells were handed to SLURM before either finished (no local stack_slot cap serializes them) ...
    first_finish = log.index("Finished jobid")
    assert all(log.index(f"SLURM jobid {sj}") < first_finish for _, sj in submitted)
    # ... and SLURM ran them on the one node one after another
    times = _squeue_times([sj for _, sj in submitted])
    (s1, e1, st1), (s2, e2, st2) = sorted(times.values())
    assert st1 == st2 == "COMPLETED" and e1 <= s2
    cells = sorted((tmp_path / "results/H0/cells").iterdir())
    assert [c.name for c in cells] == ["sim-A_c1", "sim-A_c2"]
    spans = sorted((json.loads((c / "summary.json").read_text())["started_utc"],
                    json.loads((c / "summary.json").read_text())["finished_utc"]) for c in cells)
    assert spans[0][1] <= spans[1][0]  # the cells' own clocks agree: no overlap
    assert (tmp_path / "results/H0/summary.csv").exists()
