"""End-to-end A/A: the same stack config (sim-A) launched under both role names, through H0 and H8.

Identical engines may differ only by chance, so H8's comparison must not say "differs" (the Monte Carlo
in tests/analysis/test_statistics.py bounds how often it may; one run here checks the wiring: requests
from the cells reach stats.compare, the interval is in the verdict, the outcome is one of the three).
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_same_stack_twice_is_not_called_different(snakemake_workdir, tmp_path):
    twin = tmp_path / "simtwin.yaml"  # sim-A's very file under another name (the stack name is the stem)
    shutil.copyfile(ROOT / "configs/stacks/sim-A.yaml", twin)
    cfg = {
        "stacks": {"A": "sim-A", "B": str(twin)},
        "sim": {"speedup": 20, "block_bytes_scale": 0.001, "seed": 0},
        "hypotheses": {
            "H0": {"stacks": ["A", "B"], "profile": "comfy", "sweep": {"concurrency": [1]},
                   "load": {"pattern": {"kind": "closed"}, "duration_s": 0.5, "min_ok_requests": None,
                            "workload": {"kind": "fixed_context", "context_tokens": 512, "output_tokens": 8}}},
            "H8": {"stacks": ["A", "B"], "profile": "spill", "sweep": {"variant": ["noreuse"]},
                   "points": [{"concurrency": "uwork_min", "rep": 0}, {"concurrency": "uwork_min", "rep": 1}],
                   "load": {"slo": {"ttft_ms": 50}, "workload": {"kind": "mixed_context", "output_tokens": 8},
                            "variants": {"noreuse": {
                                "pattern": {"kind": "bursty", "burst_size": 0, "pause_s": 0.001},
                                "min_ok_requests": 300, "duration_s": 0.5,
                                "max_duration_s": 60,
                                "workload": {"kind": "mixed_context", "output_tokens": 8}}}}},
        },
    }
    config = tmp_path / "aa.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = snakemake_workdir("aa", config, ["results/H8/summary.csv"], cores=1, timeout=500)
    with open(run / "results/H8/summary.csv") as fh:
        table = list(csv.DictReader(fh))
    b = next(r for r in table if r["role"] == "B")
    assert b["stack"] == "simtwin" and int(b["n_ok"]) >= 2 * 300
    assert b["outcome"] in ("equivalent", "inconclusive"), b
    lo, hi = float(b["p99_ratio_ci95_low"]), float(b["p99_ratio_ci95_high"])
    assert lo <= 1 <= hi
    verdict = json.loads((run / "results/H8/verdict.json").read_text())
    assert f"[{lo:.2f}, {hi:.2f}]" in verdict["verdict"] and "differs" not in verdict["verdict"]
