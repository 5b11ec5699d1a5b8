"""Helpers for fault-injection tests: real cells on the simulated stacks, made to fail on purpose."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from kvharness.plan.config import expand_cells, validate_config

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
        spec["load"]["min_ok_requests"] = None  # fault tests time their loads: no run-on for a sample count
        spec["load"].update({"concurrency": concurrency, "duration_s": duration_s,
                             "request_timeout_s": request_timeout_s, **load})
        spec["load"]["workload"]["context_tokens"] = context_tokens
        return spec

    return build


def wait_for_children(proc, names, timeout=30):
    """Descendants of ``proc`` once every name in ``names`` shows up in their command lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        cmdlines = [" ".join(k.cmdline()) for k in kids if k.is_running()]
        if all(any(n in c for c in cmdlines) for n in names):
            return kids
        time.sleep(0.05)
    raise AssertionError(f"children {names} never all appeared")


@pytest.fixture
def start_cell(tmp_path):
    """``start(spec, names)``: run ``kvharness cell`` on ``spec`` as a child process and wait until every
    process named in ``names`` runs under it; returns (proc, cell folder, its descendants)."""

    def start(spec, names=()):
        spec_path = tmp_path / "spec.json"
        spec_path.write_text(json.dumps(spec))
        out = tmp_path / "cells" / spec["cell"]
        proc = subprocess.Popen([sys.executable, "-m", "kvharness", "cell", "--spec", str(spec_path), "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc, out, (wait_for_children(proc, names) if names else [])

    return start
