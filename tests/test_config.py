"""Config validation: every bad input is refused with one line naming the field and what was expected."""

import copy
from pathlib import Path

import pytest
import yaml

from kvharness.config import ConfigError, expand_cells, load_config_file, load_stack, validate_config

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
# Refusals of bad config values are in tests/reliability/test_bad_inputs.py.


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


def test_load_tokenizer_is_accepted_and_reaches_the_cell():
    cfg = copy.deepcopy(BASE)
    cfg["hypotheses"]["H8"]["load"]["tokenizer"] = "models/llama/tokenizer.json"
    cells = {c["cell"]: c for c in expand_cells(validate_config(cfg), "H8")}
    assert cells["sim-A"]["load"]["tokenizer"] == "models/llama/tokenizer.json"
    cfg["hypotheses"]["H8"]["load"]["tokenizer"] = 7
    with pytest.raises(ConfigError, match="tokenizer"):
        validate_config(cfg)
