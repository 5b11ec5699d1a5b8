"""Plan SLO defaults reach every cell's load; a hypothesis's load.slo overrides single keys."""

import copy

import pytest

from kvharness.plan.config import ConfigError, cell_index, validate_config

BASE = {
    "stacks": {"A": "sim-A"},
    "profiles": {"comfy": {"tier0": "8GiB", "tier1": "8GiB", "tier2": "256GiB"}},
    "hypotheses": {"H0": {"stacks": ["A"], "profile": "comfy", "sweep": {"concurrency": [1]},
                          "load": {"workload": {"kind": "fixed_context", "context_tokens": 128}}}},
}


def test_plan_defaults_and_per_key_override():
    cell = next(iter(cell_index(validate_config(BASE)).values()))
    assert cell["load"]["slo"] == {"ttft_ms": 1000, "tpot_ms": 100, "e2e_ms": None}
    cfg = copy.deepcopy(BASE)
    cfg["slo"] = {"ttft_ms": 500}
    cfg["hypotheses"]["H0"]["load"]["slo"] = {"e2e_ms": 4000}
    cell = next(iter(cell_index(validate_config(cfg)).values()))
    assert cell["load"]["slo"] == {"ttft_ms": 500, "tpot_ms": 100, "e2e_ms": 4000}


def test_unknown_slo_key_is_one_clear_line():
    cfg = copy.deepcopy(BASE)
    cfg["slo"] = {"ttft": 500}
    with pytest.raises(ConfigError, match="slo.ttft"):
        validate_config(cfg)
