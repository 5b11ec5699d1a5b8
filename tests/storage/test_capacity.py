"""Capacity read-back: a tier point whose setting does not reach the stack fails with one clear line."""

import copy
from pathlib import Path

import pytest
import yaml

from kvharness.measure.cell import CellFailed, run_cell
from kvharness.plan.config import expand_cells, validate_config
from kvharness.stacks.capacity import compare, expected

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3


def spec_of(tiered=True, policy="lru"):
    return {"stack": {"name": "s", "tiered": tiered, "kind": "sim"}, "engine": {"eviction_policy": policy},
            "tiers": {"tier0_bytes": 2 * GIB, "tier1_bytes": 4 * GIB, "tier2_bytes": 64 * GIB}}


def test_compare_accepts_the_request_and_block_rounding():
    reported = {"tier0_bytes": 2 * GIB, "tier1_bytes": 4 * GIB - 1000, "tier2_bytes": 64 * GIB,
                "block_bytes": 2 * 1024**2, "eviction_policy": "lru"}
    assert compare(spec_of(), reported) == []


def test_compare_names_each_difference():
    reported = {"tier0_bytes": 1 * GIB, "tier1_bytes": 4 * GIB, "tier2_bytes": 64 * GIB, "block_bytes": 2 * 1024**2,
                "eviction_policy": "lru"}
    assert compare(spec_of(policy="lfu"), reported) == ["tier0 1 GiB (requested 2 GiB)", "eviction policy lru (requested lfu)"]


def test_memory_only_stack_expects_one_pool():
    spec = spec_of(tiered=False)
    assert expected(spec) == {"tier0_bytes": 2 * GIB, "tier1_bytes": 0, "tier2_bytes": 0}


def test_stack_that_ignores_the_tier_setting_fails_the_cell(tmp_path):
    """A sim-B config with a hard-coded --tier0-bytes: the requested tier point never reaches the stack."""
    stack = yaml.safe_load((ROOT / "configs/stacks/sim-B.yaml").read_text())
    argv = stack["command"]
    argv[argv.index("--tier0-bytes") + 1] = "1GiB"
    path = tmp_path / "sim-B-fixed.yaml"
    path.write_text(yaml.safe_dump(stack))
    cfg = yaml.safe_load((ROOT / "configs/config.yaml").read_text())
    cfg["stacks"] = {"A": "sim-A", "B": str(path)}
    cfg["tier2_root"] = str(tmp_path / "tier2")
    h6 = copy.deepcopy(cfg["hypotheses"]["H6"])
    h6["sweep"] = {"concurrency": [2]}
    h6["points"] = [{"tier_total": "6GiB"}]  # T0 2 GiB at the 1:2 ratio
    h6["load"]["duration_s"] = 1
    h6["load"]["min_ok_requests"] = None
    cfg["hypotheses"] = {"H6": h6}
    cell = expand_cells(validate_config(cfg), "H6")[0]
    with pytest.raises(CellFailed) as e:
        run_cell(cell, tmp_path / "cells" / cell["cell"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "capacity check" in msg and "tier0 1 GiB (requested 2 GiB)" in msg and "did not reach the stack" in msg
    failed = next((tmp_path / "cells").glob(f"{cell['cell']}.failed-*"))
    assert "capacity check" in (failed / "reason.txt").read_text()
    assert not (failed / "metrics.jsonl").exists()  # no load was run against the wrong configuration
