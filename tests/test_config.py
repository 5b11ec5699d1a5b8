"""Config validation: every bad input is refused with one line naming the field and what was expected."""

import copy
from pathlib import Path

import pytest
import yaml

from kvharness.config import ConfigError, expand_cells, load_config_file, load_stack, validate_config

ROOT = Path(__file__).resolve().parents[1]
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
    ("unknown workload kind", _set(["hypotheses", "H0", "load", "workload", "kind"], "banana"), r"workload.kind: 'banana' is not one of"),
    ("zero context", _set(["hypotheses", "H0", "load", "workload", "context_tokens"], 0), r"context_tokens: 0 is less than the minimum"),
    ("bad pattern kind", _set(["hypotheses", "H0", "load", "pattern"], {"kind": "tsunami"}), r"pattern.kind"),
    ("negative duration", _set(["hypotheses", "H0", "load", "duration_s"], -1), r"duration_s: -1 is less than or equal to the minimum"),
    ("non-loopback bind", _set(["host"], "0.0.0.0"), r"host: '0.0.0.0' is not a loopback address; set allow_remote_bind"),
    ("bad eviction policy", _set(["engine", "eviction_policy"], "random"), r"eviction_policy: 'random' is not one of"),
    ("bucket min > max", _set(["hypotheses", "H8", "load", "workload", "buckets"],
                              [{"name": "x", "min_tokens": 900, "max_tokens": 100, "weight": 1}]), r"buckets.x: min_tokens 900 > max_tokens 100"),
    ("uwork without H0", _del(["hypotheses", "H0"]), r"'uwork' needs hypothesis H0"),
    ("speedup zero", _set(["sim", "speedup"], 0), r"sim.speedup: 0 is less than or equal to the minimum"),
    ("setting of another pattern", _set(["hypotheses", "H0", "load", "pattern"], {"kind": "closed", "burst_size": 4}),
     r"pattern.burst_size: not a setting of a closed pattern"),
    ("fixed context without length", _del(["hypotheses", "H0", "load", "workload", "context_tokens"]),
     r"workload.context_tokens: a fixed_context workload needs it"),
    ("mixed context with a length", _set(["hypotheses", "H8", "load", "workload", "context_tokens"], 100),
     r"workload.context_tokens: not used by mixed_context"),
    ("bool as int", _set(["telemetry", "interval_ms"], "fast"), r"telemetry.interval_ms"),
]


@pytest.mark.parametrize("name,fn,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_with_one_line(name, fn, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        validate_config(mutate(fn))
    assert "\n" not in str(info.value)


def test_empty_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config_file(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_stack_config_errors_name_the_file(tmp_path):
    (tmp_path / "shelly.yaml").write_text("kind: sim\ncommand: 'python -m kvharness sim'\n")
    with pytest.raises(ConfigError, match=r"shelly.yaml: command: expected an argv list .*never a shell string"):
        load_stack("shelly", tmp_path)
    (tmp_path / "typo.yaml").write_text("kind: sim\ncomand: [x]\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'comand'"):
        load_stack("typo", tmp_path)
    (tmp_path / "kind.yaml").write_text("kind: magic\ncommand: [x]\n")
    with pytest.raises(ConfigError, match=r"kind.yaml: kind: expected one of"):
        load_stack("kind", tmp_path)
    with pytest.raises(ConfigError, match="invalid stack name"):
        load_stack("sim A;rm", tmp_path)
    with pytest.raises(ConfigError, match="stack config file '../nope.yaml' not found"):
        load_stack("../nope.yaml", tmp_path)
    ok = tmp_path / "my-stack.yaml"
    ok.write_text("kind: external\n")
    assert load_stack(str(ok))["name"] == "my-stack"


def test_default_config_expands_h0_and_h8():
    cfg = validate_config(copy.deepcopy(BASE))
    h0 = expand_cells(cfg, "H0")
    assert len(h0) == 2 * len(BASE["hypotheses"]["H0"]["sweep"]["concurrency"])
    assert {c["cell"] for c in h0} >= {"sim-A_c1", "sim-B_c256"}
    h8 = {c["cell"]: c for c in expand_cells(cfg, "H8")}
    assert set(h8) == {"sim-A", "sim-B"}
    # Equal memory budget: the memory-only stack gets T0 + T1 as its device pool.
    a, b = h8["sim-A"]["tiers"], h8["sim-B"]["tiers"]
    assert a["memory_budget_bytes"] == b["memory_budget_bytes"] == a["tier0_bytes"] == b["tier0_bytes"] + b["tier1_bytes"]
    assert a["tier2_bytes"] == 0 and b["tier2_bytes"] > 0
    assert h8["sim-A"]["load"]["workload"]["buckets"][0]["weight"] == 0.6  # SPEC's H8 mix by default
    assert cfg["engine"]["tokens_per_block"] == 32  # defaults filled from the schema


def test_paper_config_is_valid():
    cfg = load_config_file(ROOT / "configs" / "paper.yaml")
    assert all(h["load"]["duration_s"] >= 120 for h in cfg["hypotheses"].values())
