"""Helpers for fault-injection tests: real cells on the simulated stacks, made to fail on purpose."""

import copy
from pathlib import Path

import pytest
import yaml

from kvharness.config import expand_cells, validate_config

ROOT = Path(__file__).resolve().parents[2]


def base_config() -> dict:
    return yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())


@pytest.fixture
def make_cell(tmp_path):
    """A real cell spec of the default config (H0, one stack), with faults and load overrides applied."""

    def build(role="B", concurrency=4, duration_s=1.0, fault_args=(), request_timeout_s=5.0, context_tokens=256, **load):
        cfg = validate_config(base_config())
        cells = [c for c in expand_cells(cfg, "H0") if c["role"] == role and c["load"]["concurrency"] == 1]
        spec = copy.deepcopy(cells[0])
        spec["cell"] = f"{spec['stack']['name']}_fault"
        spec["tier2_root"] = str(tmp_path / "tier2")
        spec["stack"]["command"] = [*spec["stack"]["command"], *fault_args]
        spec["load"].update({"concurrency": concurrency, "duration_s": duration_s,
                             "request_timeout_s": request_timeout_s, **load})
        spec["load"]["workload"]["context_tokens"] = context_tokens
        return spec

    return build
