"""Cells of the real stack configs (configs/stacks/*.yaml), rendered without launching anything."""

import copy

import pytest
import yaml

from kvharness.plan.config import CONFIG_DIR, expand_cells, validate_config


def real_cells(stacks: dict, hyp: str = "H8", profile: str | None = None, **engine) -> dict:
    """role -> cell spec of ``hyp`` with the given stack configs (the repo's default config otherwise)."""
    raw = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["stacks"] = stacks
    raw["engine"].update(engine)
    if profile:
        raw["hypotheses"][hyp]["profile"] = profile
    if hyp == "H8":
        raw["hypotheses"][hyp]["load"]["concurrency"] = 4
    cfg = validate_config(raw)
    cells = {c["role"]: c for c in expand_cells(cfg, hyp)}
    for c in cells.values():
        c["load"]["min_ok_requests"] = None  # these tests check launches, not percentiles: cells stay short
    return cells


def auto_ports(stack: dict) -> dict:
    """The same stack with free ports, so a test never collides with a real server on 8355/9000."""
    s = copy.deepcopy(stack)
    for key in ("port", "metrics_port", "system_port"):
        if s.get(key) is not None:
            s[key] = "auto"
    return s


@pytest.fixture
def cells():
    return real_cells
