"""`kvharness plan`: cells and expected wall time per hypothesis before a run; the estimate vs the run after it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvharness.plan import estimate as P
from kvharness.plan.config import expand_cells, validate_config

ROOT = Path(__file__).resolve().parents[1]


def tiny(**extra):
    return validate_config({**yaml.safe_load((ROOT / "tests/workflow/tiny.yaml").read_text()), **extra})


def test_duration_bound_cells_cost_their_load_drain_and_overhead(tmp_path):
    cfg = tiny()
    plan = P.make_plan(cfg, P.build_context(cfg, tmp_path / "results"), ["H0"])
    h0 = cfg["hypotheses"]["H0"]
    n = len(h0["sweep"]["concurrency"]) * len(h0["stacks"]) * h0.get("reps", 1)
    cells = {c["cell"]: c for c in plan["hypotheses"]["H0"]["cells"]}
    assert plan["hypotheses"]["H0"]["n_cells"] == n == len(cells)
    drains = {}
    for spec in expand_cells(cfg, "H0"):
        users = spec["load"]["concurrency"]
        drain = cells[spec["cell"]]["estimate_s"] - h0["load"]["duration_s"] - P.DEFAULT_OVERHEAD_S
        # closed loop: the requests in flight at the end take one latency, users / throughput (Little's law)
        assert drain == pytest.approx(users / P.model_rate(spec, users), abs=0.01)
        drains[(spec["stack"]["name"], users)] = drain
    assert drains[("sim-A", 128)] > drains[("sim-A", 1)] > 0
    total = sum(c["estimate_s"] for c in cells.values())
    assert plan["hypotheses"]["H0"]["estimate_s"] == pytest.approx(total + P.ANALYSIS_S, abs=0.1)
    assert plan["total_s"] == pytest.approx(total + P.ANALYSIS_S + P.WORKFLOW_START_S, abs=0.1)


def test_a_request_count_load_is_requests_over_rate_capped_by_its_duration(tmp_path):
    cfg = tiny()
    ctx = P.build_context(cfg, tmp_path)
    spec = expand_cells(cfg, "H8")[0]
    spec["load"].update(max_requests=100, duration_s=1e6, pattern={"kind": "closed"})
    spec["load"]["concurrency"] = 8
    rate = P.model_rate(spec, 8)
    assert rate and P.estimate_cell(spec, ctx).load_s == pytest.approx(100 / rate)
    spec["load"]["max_requests"] = 200
    assert P.estimate_cell(spec, ctx).load_s == pytest.approx(200 / rate)
    spec["load"]["duration_s"] = 0.5 * 100 / rate
    est = P.estimate_cell(spec, ctx)
    assert est.load_s == spec["load"]["duration_s"] and "capped" in est.basis
    # the evidence rule (load.min_ok_requests) comes first when a config has it
    spec["load"].update(min_ok_requests=50, max_duration_s=1e6)
    assert P.estimate_cell(spec, ctx).basis.startswith("evidence") and P.estimate_cell(spec, ctx).load_s == pytest.approx(50 / rate)


def test_finished_cells_give_overhead_rate_and_the_comparison(tmp_path):
    cfg = tiny()
    results = tmp_path / "results"
    before = P.make_plan(cfg, P.build_context(cfg, results), ["H0"])
    cells = before["hypotheses"]["H0"]["cells"]
    for i, c in enumerate(cells):  # every cell took 5 s of load and 7 s of job
        d = results / "H0" / "cells" / c["cell"]
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": "ok", "wall_s": 6.0, "phases_s": {"load": 5.0},
                                                    "requests": {"n_requests": 50}}))
        (d / "cell.json").write_text(json.dumps({"load": {"concurrency": 4}, "stack": {"name": "sim-A"},
                                                 "measurement": {"lock": {"waited_s": 3.0 if i == 0 else 0.0}}}))
        (results / "H0" / "benchmarks").mkdir(exist_ok=True)
        job = 10.0 if i == 0 else 7.0  # the first also waited 3 s for another workflow's cell
        (results / "H0" / "benchmarks" / f"{c['cell']}.tsv").write_text(f"s\th:m:s\n{job}\t0:00:07\n")
    ctx = P.build_context(cfg, results)
    assert ctx.overhead_s == pytest.approx(2.0) and ctx.rates[("H0", "sim-A")][0] == (4, 10.0)
    after = P.make_plan(cfg, ctx, ["H0"])
    assert after["hypotheses"]["H0"]["n_todo"] == 0 and after["hypotheses"]["H0"]["estimate_s"] == 0
    text, totals = P.compare(before, results)
    assert totals["actual_s"] == pytest.approx(7.0 * len(cells)) and totals["lock_wait_s"] == 3.0
    assert totals["estimate_s"] == pytest.approx(sum(c["estimate_s"] for c in cells))
    assert "H0" in text and "%" in text


def test_progress_line_counts_done_cells_and_scales_what_is_left(tmp_path):
    where, results = tmp_path / "plan", tmp_path / "results"
    where.mkdir()
    (where / "H8.json").write_text(json.dumps({"started": 0, "cells": {"a": 10.0, "b": 10.0, "c": 20.0}}))
    d = results / "H8" / "cells" / "a"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"status": "ok", "wall_s": 20.0}))  # twice the estimate
    (results / "H8" / "cells" / "b.failed-20261205T000000Z").mkdir()
    assert P.progress_line("H8", results, where) == "H8: 1/3 cells done (1 failed), ~1m00s left"


def test_cli_prints_each_hypothesis_and_saves_the_plan(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "tests/workflow/tiny.yaml").read_text())
    r = subprocess.run([sys.executable, "-m", "kvharness", "plan", "H8", "--configfile", str(cfg), "--only", "H8",
                        "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("H0 ") and lines[2].startswith("H8 ") and lines[-1].startswith("total")
    saved = json.loads((tmp_path / "results/plan.json").read_text())
    assert set(saved["hypotheses"]) == {"H0", "H8"}
    r = subprocess.run([sys.executable, "-m", "kvharness", "plan", "H99"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "H99" in r.stderr


def test_a_uwork_load_reads_h0s_uwork_or_says_it_assumed_one(tmp_path):
    cfg = tiny()
    spec = next(c for c in expand_cells(cfg, "H8") if c["load"]["concurrency"] == "uwork_min")
    ctx = P.build_context(cfg, tmp_path)
    users, note = P.concurrency(spec, ctx)
    h0 = expand_cells(cfg, "H0")
    rates = {c["load"]["concurrency"]: P.model_rate(c, c["load"]["concurrency"]) for c in h0}
    first = min(c for c, r in rates.items() if r >= P.UWORK_MODEL_SHARE * max(rates.values()))
    assert "assumed" in note and users == first  # where the model's throughput nears its peak
    (tmp_path / "H0").mkdir()
    (tmp_path / "H0" / "uwork.csv").write_text("stack,u_work_used\nsim-A,16\nsim-B,8\n")
    assert P.concurrency(spec, P.build_context(cfg, tmp_path)) == (8, "")  # the lower of the two stacks
