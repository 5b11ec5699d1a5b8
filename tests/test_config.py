"""Config validation: every bad input is refused with one line naming the field and what was expected."""

import copy
from pathlib import Path

import pytest
import yaml

from kvharness.plan.config import ConfigError, expand_cells, load_config_file, load_stack, validate_config

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
    (tmp_path / "sysport.yaml").write_text("kind: dynamo\ncommand: [x]\nsystem_port: 40000\n")
    with pytest.raises(ConfigError, match=r"sysport.yaml: system_port: expected 'auto' or an integer 1..32767"):
        load_stack("sysport", tmp_path)   # Dynamo parses DYN_SYSTEM_PORT as i16: 40000 makes the worker exit
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
    # two workloads x (two equal-load rules x 2 reps + a 3-point SLO sweep), per stack
    assert {"sim-A_wlnoreuse_cuwork_min_rep0", "sim-B_wlchat_cuwork_max_rep1", "sim-B_wlchat_c128"} <= set(h8)
    # Equal memory budget: the memory-only stack gets T0 + T1 as its device pool.
    a, b = h8["sim-A_wlchat_c8"]["tiers"], h8["sim-B_wlchat_c8"]["tiers"]
    assert a["memory_budget_bytes"] == b["memory_budget_bytes"] == a["tier0_bytes"] == b["tier0_bytes"] + b["tier1_bytes"]
    assert a["tier2_bytes"] == 0 and b["tier2_bytes"] > 0
    noreuse, chat = h8["sim-A_wlnoreuse_c8"]["load"], h8["sim-B_wlchat_c8"]["load"]
    assert noreuse["workload"]["buckets"][0]["weight"] == 0.6  # SPEC's H8 mix by default
    assert chat["workload"]["first_turn_buckets"] == noreuse["workload"]["buckets"]  # the same mix, as chat
    assert "variants" not in chat and chat["endpoint"] == "chat"
    assert h8["sim-A_wlnoreuse_cuwork_min_rep0"]["load"]["concurrency"] == "uwork_min"
    assert cfg["engine"]["tokens_per_block"] == 32  # defaults filled from the schema


def test_paper_config_is_valid():
    cfg = load_config_file(ROOT / "configs" / "paper.yaml")
    assert all(h["load"]["duration_s"] >= 120 for h in cfg["hypotheses"].values())


def test_load_tokenizer_is_accepted_and_reaches_the_cell():
    cfg = copy.deepcopy(BASE)
    cfg["hypotheses"]["H8"]["load"]["tokenizer"] = "models/llama/tokenizer.json"
    cells = {c["cell"]: c for c in expand_cells(validate_config(cfg), "H8")}
    assert cells["sim-A_wlchat_c8"]["load"]["tokenizer"] == "models/llama/tokenizer.json"
    cfg["hypotheses"]["H8"]["load"]["tokenizer"] = 7
    with pytest.raises(ConfigError, match="tokenizer"):
        validate_config(cfg)


def test_h8_chat_working_set_exceeds_memory_and_fits_the_disk_tier():
    from kvharness.sim.profiles import kv_bytes_per_token
    from kvharness.plan.workingset import working_set

    cfg = validate_config(copy.deepcopy(BASE))
    cell = next(c for c in expand_cells(cfg, "H8") if c["cell"] == "sim-B_wlchat_c8")
    load = {**cell["load"], "concurrency": 8}
    ws = working_set(load, cell["tiers"], kv_bytes_per_token(cfg["model"], cfg["precision"], cfg["hardware"]))
    t = cell["tiers"]
    assert t["tier0_bytes"] + t["tier1_bytes"] < ws["working_set_bytes"] <= t["tier0_bytes"] + t["tier1_bytes"] + t["tier2_bytes"]
    assert ws["fits_in"] == "T0+T1+T2"


def test_pressure_bytes_become_a_count_of_pressure_prompts():
    from kvharness.sim.profiles import kv_bytes_per_token
    from kvharness.plan.pressure import pressure_requests

    cfg = validate_config(copy.deepcopy(BASE))
    kv = kv_bytes_per_token(cfg["model"], cfg["precision"], cfg["hardware"])
    cells = {c["cell"]: c for c in expand_cells(cfg, "H9")}
    t2 = next(c for name, c in cells.items() if "press4GiB" in name and c["role"] == "B")
    p = t2["load"]["workload"]["pressure"]
    assert p["count"] == pressure_requests(4 * 1024**3, p["context_tokens"], kv) == 32  # 4 GiB / (2048 x 64 KiB)
    assert t2["load"]["pressure_bytes"] == 4 * 1024**3 and p["rate"] is None
    warm = next(c for name, c in cells.items() if "press0_rep0" in name)
    assert warm["load"]["workload"]["pressure"] is None
    cold = next(c for name, c in cells.items() if "rescold" in name)
    assert cold["load"]["workload"]["cold_resume"] is True
    assert t2["sim"]["speedup"] == 1 and t2["tiers"]["tier0_bytes"] == 1024**3


def test_load_variant_axis_names_an_unknown_variant():
    cfg = copy.deepcopy(BASE)
    cfg["hypotheses"]["H8"]["sweep"]["variant"] = ["noreuse", "nope"]
    with pytest.raises(ConfigError, match=r"H8.sweep.variant: unknown load variant 'nope' \(load.variants defines: noreuse, chat, trace\)"):
        validate_config(cfg)


def test_uwork_min_and_max_read_every_stack(tmp_path):
    from kvharness.measure.cell import read_uwork, resolve_load

    csv_path = tmp_path / "uwork.csv"
    csv_path.write_text("stack,role,u_work,u_work_used\nsim-A,A,4,4\nsim-B,B,16,16\n")
    assert read_uwork(csv_path, "sim-A", "uwork_min") == 4
    assert read_uwork(csv_path, "sim-A", "uwork_max") == 16
    assert read_uwork(csv_path, "sim-B") == 16
    spec = {"hyp": "H8", "stack": {"name": "sim-A"}, "load": {"concurrency": "uwork_max", "pattern": {"kind": "closed"}}}
    load = resolve_load(spec, uwork={"value": 16, "from": "x", "rule": "uwork_max"})
    assert load["concurrency"] == 16 and load["concurrency_source"]["rule"] == "uwork_max"
    assert resolve_load(spec, uwork_csv=str(csv_path))["concurrency"] == 16


def test_h10_tier2_sweep_is_one_cell_for_the_memory_only_stack():
    cfg = validate_config(copy.deepcopy(BASE))
    cells = expand_cells(cfg, "H10")
    a = [c["cell"] for c in cells if c["role"] == "A"]
    b = [c["cell"] for c in cells if c["role"] == "B"]
    t2_points = [p for p in BASE["hypotheses"]["H10"]["points"] if "tier_total" not in p]
    budgets = {p["tier_total"] for p in BASE["hypotheses"]["H10"]["points"] if "tier_total" in p}
    assert len(b) == len(BASE["hypotheses"]["H10"]["points"])
    assert len(a) == 1 + len(budgets) and not any("_t2" in cid for cid in a)  # A has no disk tier
    assert len(t2_points) == 6


def test_a_trace_keeps_concurrency_only_where_it_is_swept():
    cfg = validate_config(copy.deepcopy(BASE))
    assert {c["load"]["concurrency"] for c in expand_cells(cfg, "H10")} == {None}  # the trace's own arrivals only
    h8 = {c["cell"]: c for c in expand_cells(cfg, "H8")}
    assert h8["sim-B_wltrace_c8"]["load"]["concurrency"] == 8  # H8's sweep: at most 8 in flight
    assert h8["sim-B_wltrace_cuwork_min_rep0"]["load"]["concurrency"] == "uwork_min"
