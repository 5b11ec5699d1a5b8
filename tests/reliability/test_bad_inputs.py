"""Bad inputs: every one is refused with a one-line message naming the field and what was expected.

Config values (validated at workflow start), stack files, load specs, simulator options, trace files.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvharness.plan.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())


def mutate(fn):
    cfg = copy.deepcopy(BASE)
    fn(cfg)
    return cfg


def _set(path, value):
    def fn(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return fn


def _del(path):
    def fn(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return fn


BAD = [
    ("unknown top-level key", _set(["enginee"], 1), r"unknown key 'enginee'"),
    ("unknown nested key", _set(["hypotheses", "H0", "loda"], 1), r"unknown key 'hypotheses.H0.loda'"),
    ("unknown load key", _set(["hypotheses", "H0", "load", "durration_s"], 3), r"hypotheses.H0.load.durration_s"),
    ("wrong type", _set(["engine", "max_batch_size"], "x"), r"engine.max_batch_size: 'x' is not of type 'integer'"),
    ("zero concurrency", _set(["hypotheses", "H0", "sweep", "concurrency"], [0, 1]), r"concurrency\[0\]: 0 is less than the minimum of 1"),
    ("negative concurrency", _set(["hypotheses", "H0", "sweep", "concurrency"], [1, -4]), r"concurrency\[1\]: -4"),
    ("concurrency as text", _set(["hypotheses", "H8", "load", "concurrency"], "lots"), r"H8.load.concurrency"),
    ("empty sweep", _set(["hypotheses", "H0", "sweep", "concurrency"], []), r"sweep.concurrency: \[\] should be non-empty"),
    ("duplicate cell", _set(["hypotheses", "H0", "sweep", "concurrency"], [1, 2, 2]), r"duplicate cell for concurrency 2"),
    ("unknown stack role", _set(["hypotheses", "H0", "stacks"], ["A", "C"]), r"unknown stack role 'C'"),
    ("unknown stack config", _set(["stacks", "B"], "no-such-stack"), r"unknown stack 'no-such-stack'"),
    ("unknown profile", _set(["hypotheses", "H8", "profile"], "nope"), r"H8.profile: unknown profile 'nope'"),
    ("unknown hypothesis id", _set(["hypotheses", "HX"], BASE["hypotheses"]["H0"]), r"invalid name 'HX'"),
    ("malformed byte size", _set(["profiles", "comfy", "tier0"], "4 GBB"), r"profiles.comfy.tier0: expected a byte size"),
    ("negative byte size", _set(["profiles", "spill", "tier1"], "-1GiB"), r"profiles.spill.tier1: expected a byte size"),
    ("zero device pool", _set(["profiles", "stress", "tier0"], 0), r"profiles.stress.tier0: expected a device KV pool > 0"),
    ("missing tier", _del(["profiles", "spill", "tier2"]), r"profiles.spill: missing required key 'tier2'"),
    ("unknown workload kind", _set(["hypotheses", "H0", "load", "workload", "kind"], "banana"), r"H0.load.workload.kind: expected one of .*got 'banana'"),
    ("zero context", _set(["hypotheses", "H0", "load", "workload", "context_tokens"], 0), r"H0.load.workload.context_tokens: expected an integer >= 1, got 0"),
    ("bad pattern kind", _set(["hypotheses", "H0", "load", "pattern"], {"kind": "tsunami"}), r"pattern.kind"),
    ("negative duration", _set(["hypotheses", "H0", "load", "duration_s"], -1), r"duration_s: -1 is less than or equal to the minimum"),
    ("non-loopback bind", _set(["host"], "0.0.0.0"), r"host: '0.0.0.0' is not a loopback address; set allow_remote_bind"),
    ("bad eviction policy", _set(["engine", "eviction_policy"], "random"), r"eviction_policy: 'random' is not one of"),
    ("bucket min > max", _set(["hypotheses", "H8", "load", "variants", "noreuse", "workload", "buckets"],
                              [{"name": "x", "min_tokens": 900, "max_tokens": 100, "weight": 1}]), r"buckets\[0\].max_tokens: expected an integer >= min_tokens \(900\), got 100"),
    ("uwork without H0", _del(["hypotheses", "H0"]), r"'uwork' needs hypothesis H0"),
    ("speedup zero", _set(["sim", "speedup"], 0), r"sim.speedup: 0 is less than or equal to the minimum"),
    ("setting of another pattern", _set(["hypotheses", "H0", "load", "pattern"], {"kind": "closed", "burst_size": 4}),
     r"H0.load.pattern.burst_size: unknown key \(expected one of: .*spawn_rate"),
    ("fixed context without length", _del(["hypotheses", "H0", "load", "workload", "context_tokens"]),
     r"H0.load.workload.context_tokens: required key is missing"),
    ("mixed context with a length", _set(["hypotheses", "H8", "load", "workload", "context_tokens"], 100),
     r"workload.context_tokens: not used by mixed_context"),
    ("impossible tier split", _set(["profiles", "spill", "tier2"], "1GiB"), r"impossible tier split .* tier2 \(1GiB\) < tier1 \(4GiB\)"),
    ("bool as int", _set(["telemetry", "interval_ms"], "fast"), r"telemetry.interval_ms"),
]


@pytest.mark.parametrize("name,fn,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_with_one_line(name, fn, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        validate_config(mutate(fn))
    assert "\n" not in str(info.value)


def _kvharness(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "kvharness", *args], capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc, pattern):
    import re

    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    assert re.search(pattern, lines[-1]), lines[-1]
    assert "Traceback" not in proc.stderr


SIM_BAD = [
    ("sim non-loopback bind", ["--mode", "A", "--host", "0.0.0.0"], r"not a loopback address; pass --allow-remote"),
    ("sim malformed size", ["--mode", "B", "--tier0-bytes", "4 GBB"], r"--tier0-bytes: expected a byte size"),
    ("sim unknown model", ["--mode", "A", "--model-profile", "gpt-17"], r"gpt-17"),
]


@pytest.mark.parametrize("name,args,pattern", SIM_BAD, ids=[b[0] for b in SIM_BAD])
def test_simulator_refuses_bad_options(name, args, pattern):
    _one_line_error(_kvharness("sim", "--port", "0", *args), pattern)


LOAD_BASE = {"base_url": "http://127.0.0.1:9", "model": "m", "pattern": {"kind": "closed", "concurrency": 1},
             "workload": {"kind": "fixed_context", "context_tokens": 8, "output_tokens": 2}, "duration_s": 1}


def _load(**changes):
    spec = copy.deepcopy(LOAD_BASE)
    for dotted, value in changes.items():
        node = spec
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return spec


LOAD_BAD = [
    ("load zero concurrency", _load(pattern__concurrency=0), r"pattern.concurrency: expected an integer >= 1, got 0"),
    ("load negative concurrency", _load(pattern__concurrency=-3), r"pattern.concurrency"),
    ("load unknown key", _load(durration_s=3), r"durration_s"),
    ("load unknown pattern", _load(pattern={"kind": "tsunami"}), r"pattern.kind"),
    ("load missing prompt length", _load(workload={"kind": "fixed_context", "output_tokens": 2}), r"workload.context_tokens"),
    ("load missing trace file", _load(pattern={"kind": "trace", "path": "/nonexistent/trace.jsonl"},
                                      workload={"kind": "trace"}), r"trace.jsonl"),
]


@pytest.mark.parametrize("name,spec,pattern", LOAD_BAD, ids=[b[0] for b in LOAD_BAD])
def test_load_generator_refuses_bad_specs(name, spec, pattern, tmp_path):
    path = tmp_path / "load.json"
    path.write_text(json.dumps(spec))
    proc = _kvharness("loadgen", "--spec", str(path), "--out", str(tmp_path / "m.jsonl"))
    _one_line_error(proc, pattern)
    assert proc.returncode == 2


def test_unreadable_trace_line_names_file_and_line(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n{not json\n')
    spec = _load(pattern={"kind": "trace", "path": str(trace)}, workload={"kind": "trace"})
    path = tmp_path / "load.json"
    path.write_text(json.dumps(spec))
    _one_line_error(_kvharness("loadgen", "--spec", str(path), "--out", str(tmp_path / "m.jsonl")), r"trace.jsonl:2")


def test_missing_spec_file(tmp_path):
    _one_line_error(_kvharness("loadgen", "--spec", str(tmp_path / "nope.json"), "--out", str(tmp_path / "m.jsonl")), r"nope.json")


def test_unknown_cell_is_refused():
    _one_line_error(_kvharness("cell", "--hyp", "H0", "--cell", "sim-Z_c1"), r"--cell: unknown cell 'sim-Z_c1' for H0")


def test_unknown_hypothesis_is_refused():
    _one_line_error(_kvharness("cell", "--hyp", "H42"), r"unknown hypothesis 'H42'")


def test_unknown_subcommand():
    _one_line_error(_kvharness("benchmark"), r"unknown command 'benchmark'")


def test_snakemake_stops_with_one_line_on_a_bad_key(tmp_path):
    bad = copy.deepcopy(BASE)
    bad["hypotheses"]["H8"]["loda"] = 1
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(cfg), "-n"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "unknown key" in line]
    # one line, naming the file and line that set the key, then the field and what is allowed there
    assert len(errors) == 1 and errors[0].startswith(f"{cfg}:"), errors
    assert errors[0].endswith("unknown key 'hypotheses.H8.loda' (allowed here: description, engine, load, points, profile, reps, stacks, sweep)")
