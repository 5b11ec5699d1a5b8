"""One definition per default: the simulator's flags, the workflow schema and the load generator's spec agree,
because they read the same tables (kvharness.defaults, kvharness.loadgen.spec). Issue 26 found copies that had
drifted (sim --speedup 1 vs 20, --lora-adapter-bytes 64 vs 16 MiB, a block_bytes_scale fallback of 1.0)."""
import argparse

from kvharness import defaults
from kvharness.plan.config import load_schema
from kvharness.loadgen import spec as loadspec
from kvharness.sim import cli as sim_cli
from kvharness.units import parse_bytes


def _sim_flag_defaults() -> dict:
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    return {a.dest: a.default for a in parser._actions}


def test_the_sim_cli_and_the_workflow_schema_default_alike():
    flags = _sim_flag_defaults()
    schema = load_schema()["properties"]
    checked = 0
    for section in ("engine", "sim"):
        for key, prop in schema[section]["properties"].items():
            if key not in flags:  # e.g. max_cpu_loras: the simulator has no host adapter cache
                continue
            flag = parse_bytes(flags[key]) if key.endswith("_bytes") else flags[key]
            assert flag == prop["default"], f"kvharness sim --{key.replace('_', '-')} defaults to {flags[key]!r}, " \
                                            f"the workflow's {section}.{key} to {prop['default']!r}"
            checked += 1
    assert checked == len(defaults.SIM) + len(defaults.ENGINE) - 1  # every default but max_cpu_loras


def test_the_workflow_schema_takes_the_load_generators_defaults():
    schema = load_schema()
    load = schema["$defs"]["load"]["properties"]
    for key in ("seed", "request_timeout_s"):
        assert load[key]["default"] == loadspec.default(key)
    assert schema["$defs"]["pattern"]["default"] == loadspec.DEFAULT_PATTERN
    # and what the load generator itself fills in for a spec that names neither
    resolved = loadspec.validate_spec({"model": "m", "pattern": {"kind": "closed", "concurrency": 1},
                                       "workload": {"kind": "fixed_context", "context_tokens": 8}, "duration_s": 1})
    assert resolved["seed"] == load["seed"]["default"]
    assert resolved["request_timeout_s"] == load["request_timeout_s"]["default"]
