"""Every sweep axis, load pattern and workload reaches the workflow: `snakemake -n` plans the right cells,
and one bad value of each is refused with one line naming the key and what was expected."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvharness.plan.config import ConfigError, cell_index, validate_config

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FIXED = {"kind": "fixed_context", "context_tokens": 64, "output_tokens": 4}
CHAT = {"kind": "sessioned_chat", "sessions": 2, "turns": 2, "first_turn_tokens": 64, "turn_tokens": 8, "output_tokens": 4}

# id -> (hypothesis section, expected cell ids)
CASES = {
    "concurrency": ({"sweep": {"concurrency": [1, 2]}}, ["sim-A_c1", "sim-A_c2"]),
    "rate": ({"sweep": {"rate": [2.5, 5]}, "load": {"pattern": {"kind": "poisson", "rate": 1}}}, ["sim-A_r2p5", "sim-A_r5"]),
    "context_tokens": ({"sweep": {"context_tokens": [64, 128]}}, ["sim-A_ctx64", "sim-A_ctx128"]),
    "prefix_groups": ({"sweep": {"prefix_groups": [1, 4]},
                       "load": {"workload": {**FIXED, "shared_prefix_ratio": 1.0}}}, ["sim-A_pg1", "sim-A_pg4"]),
    "profile": ({"sweep": {"profile": ["comfy", "spill"]}}, ["sim-A_profcomfy", "sim-A_profspill"]),
    "tier0": ({"sweep": {"tier0": ["1GiB", "2GiB"]}}, ["sim-A_t01GiB", "sim-A_t02GiB"]),
    "tier1": ({"sweep": {"tier1": ["4GiB"]}, "stacks": ["B"]}, ["sim-B_t14GiB"]),
    "tier2": ({"sweep": {"tier2": ["64GiB"]}, "stacks": ["B"]}, ["sim-B_t264GiB"]),
    "tier_total": ({"sweep": {"tier_total": ["3GiB", "6GiB"]}, "stacks": ["B"]}, ["sim-B_tt3GiB", "sim-B_tt6GiB"]),
    "eviction_policy": ({"sweep": {"eviction_policy": ["lru", "lfu", "fifo"]}, "stacks": ["B"]},
                        ["sim-B_evlru", "sim-B_evlfu", "sim-B_evfifo"]),
    "lora_adapters": ({"sweep": {"lora_adapters": [4, 8]}, "load": {"lora": {"count": 2}}}, ["sim-A_lora4", "sim-A_lora8"]),
    "lora_churn": ({"sweep": {"lora_churn": ["random", "hot_cold"]}, "load": {"lora": {"count": 4}}},
                   ["sim-A_churnrandom", "sim-A_churnhot_cold"]),
    "background_io": ({"sweep": {"background_io": ["off", "on"]}, "stacks": ["B"]}, ["sim-B_biooff", "sim-B_bioon"]),
    "sessions": ({"sweep": {"sessions": [2, 4]}, "load": {"workload": CHAT, "endpoint": "chat"}}, ["sim-A_sess2", "sim-A_sess4"]),
    "idle_gap_s": ({"sweep": {"idle_gap_s": [0, 1.5]}, "load": {"workload": CHAT, "endpoint": "chat"}},
                   ["sim-A_idle0", "sim-A_idle1p5"]),
    "telemetry_interval_ms": ({"sweep": {"telemetry_interval_ms": [100, 500]}}, ["sim-A_tel100", "sim-A_tel500"]),
    "reps": ({"sweep": {"concurrency": [1]}, "reps": 2}, ["sim-A_c1_rep0", "sim-A_c1_rep1"]),
    "points": ({"points": [{"tier0": "1GiB", "tier1": "5GiB"}, {"tier0": "2GiB", "tier1": "4GiB"}], "stacks": ["B"]},
               ["sim-B_t01GiB_t15GiB", "sim-B_t02GiB_t14GiB"]),
    "closed spawn_rate null": ({"load": {"pattern": {"kind": "closed", "spawn_rate": None}}}, ["sim-A"]),
    "closed spawn_rate 100": ({"load": {"pattern": {"kind": "closed", "spawn_rate": 100}}}, ["sim-A"]),
    "bursty": ({"load": {"pattern": {"kind": "bursty", "burst_size": 0, "pause_s": 0.5}}}, ["sim-A"]),
    "constant": ({"load": {"pattern": {"kind": "constant", "rate": 4}}}, ["sim-A"]),
    "gamma": ({"load": {"pattern": {"kind": "gamma", "rate": 4, "cov": 2}}}, ["sim-A"]),
    "ramp": ({"load": {"pattern": {"kind": "ramp", "start_rate": 1, "end_rate": 8}}}, ["sim-A"]),
    "trace": ({"load": {"pattern": {"kind": "trace", "path": "trace.jsonl"}, "workload": {"kind": "trace"}}}, ["sim-A"]),
    "mixed_context": ({"load": {"workload": {"kind": "mixed_context", "output_tokens": 4}}}, ["sim-A"]),
    "slo": ({"load": {"slo": {"ttft_ms": 500, "tpot_ms": 50}}}, ["sim-A"]),
}


def _config() -> dict:
    hyps = {}
    for i, (name, (section, _)) in enumerate(CASES.items()):
        load = {"concurrency": 2, "pattern": {"kind": "closed"}, "workload": FIXED, "duration_s": 1}
        load.update(copy.deepcopy(section.get("load", {})))
        h = {"stacks": section.get("stacks", ["A"]), "profile": "spill", "load": load}
        for key in ("sweep", "points", "reps"):
            if key in section:
                h[key] = section[key]
        hyps[f"H{900 + i}"] = h
    return {"stacks": {"A": "sim-A", "B": "sim-B"}, "hypothesis_modules": [str(HERE / "axes_hypotheses.py")],
            "profiles": {"comfy": {"tier0": "8GiB", "tier1": "8GiB", "tier2": "256GiB"},
                         "spill": {"tier0": "2GiB", "tier1": "4GiB", "tier2": "64GiB"}},
            "hypotheses": hyps}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    work = tmp_path_factory.mktemp("axes")
    cfg_path = work / "axes.yaml"
    cfg_path.write_text(yaml.safe_dump(_config()))
    targets = [f"results/H{900 + i}/summary.csv" for i in range(len(CASES))]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
                           "-n", *targets, f"--configfile={cfg_path}"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells: dict[str, set] = {}
    for hyp, cell in re.findall(r"wildcards: hyp=(H\d+), cell=([A-Za-z0-9_-]+)", proc.stdout + proc.stderr):
        cells.setdefault(hyp, set()).add(cell)
    return cells


@pytest.mark.parametrize("name", list(CASES))
def test_dry_run_plans_the_cells(planned, name):
    i = list(CASES).index(name)
    assert planned.get(f"H{900 + i}") == set(CASES[name][1])


def test_axes_change_the_cell_spec():
    cfg = _config()
    cfg.pop("hypothesis_modules")
    index = cell_index(validate_config(cfg))
    ids = {name: f"H{900 + i}" for i, name in enumerate(CASES)}
    spec = lambda name, cell: index[(ids[name], cell)]
    assert spec("rate", "sim-A_r5")["load"]["pattern"]["rate"] == 5 and spec("rate", "sim-A_r5")["load"]["concurrency"] is None
    assert spec("context_tokens", "sim-A_ctx128")["load"]["workload"]["context_tokens"] == 128
    assert spec("profile", "sim-A_profcomfy")["tiers"]["tier0_bytes"] == 16 * 2**30  # A gets T0 + T1
    assert spec("tier0", "sim-A_t01GiB")["tiers"]["tier0_bytes"] == 5 * 2**30       # 1 GiB + spill's 4 GiB T1
    tt = spec("tier_total", "sim-B_tt3GiB")["tiers"]
    assert tt["tier0_bytes"] + tt["tier1_bytes"] == 3 * 2**30 and tt["tier0_bytes"] == 2**30  # spill's 1:2 ratio
    assert spec("eviction_policy", "sim-B_evlfu")["engine"]["eviction_policy"] == "lfu"
    assert spec("lora_adapters", "sim-A_lora8")["load"]["lora"]["count"] == 8
    assert spec("lora_churn", "sim-A_churnhot_cold")["load"]["lora"]["policy"] == "hot_cold"
    assert spec("background_io", "sim-B_bioon")["background_io"]["enabled"] is True
    assert spec("sessions", "sim-A_sess4")["load"]["workload"]["sessions"] == 4
    assert spec("idle_gap_s", "sim-A_idle1p5")["load"]["workload"]["idle_s"] == 1.5
    assert spec("telemetry_interval_ms", "sim-A_tel500")["telemetry"]["interval_ms"] == 500
    r1 = spec("reps", "sim-A_c1_rep1")
    assert r1["rep"] == 1 and r1["load"]["seed"] == 1 and r1["sim"]["seed"] == 1
    p = spec("points", "sim-B_t01GiB_t15GiB")["tiers"]
    assert (p["tier0_bytes"], p["tier1_bytes"]) == (2**30, 5 * 2**30)
    assert spec("closed spawn_rate null", "sim-A")["load"]["pattern"]["spawn_rate"] is None
    assert spec("mixed_context", "sim-A")["load"]["workload"]["buckets"][0]["weight"] == 0.6  # SPEC's mix


def test_reps_are_the_outer_loop():
    cfg = _config()
    cfg.pop("hypothesis_modules")
    cfg["hypotheses"] = {"H900": {**cfg["hypotheses"]["H900"], "sweep": {"concurrency": [1, 2]}, "reps": 2}}
    cells = [c for (h, c) in cell_index(validate_config(cfg))]
    assert cells == ["sim-A_c1_rep0", "sim-A_c2_rep0", "sim-A_c1_rep1", "sim-A_c2_rep1"]


BAD = {
    "concurrency": ({"sweep": {"concurrency": [0]}}, r"sweep.concurrency\[0\]: 0 is less than the minimum of 1"),
    "rate": ({"sweep": {"rate": [-1]}, "load": {"pattern": {"kind": "poisson", "rate": 1}}}, r"sweep.rate\[0\]: -1"),
    "rate on a closed loop": ({"sweep": {"rate": [2]}}, r"sweep.rate: needs an open-loop pattern"),
    "context_tokens": ({"sweep": {"context_tokens": ["long"]}}, r"sweep.context_tokens\[0\]: 'long' is not of type 'integer'"),
    "prefix_groups": ({"sweep": {"prefix_groups": [0]}}, r"sweep.prefix_groups\[0\]: 0 is less than the minimum"),
    "profile": ({"sweep": {"profile": ["roomy"]}}, r"sweep.profile: unknown profile 'roomy'"),
    "tier0": ({"sweep": {"tier0": ["4 GBB"]}}, r"sweep.tier0: size: expected a byte size"),
    "tier_total": ({"sweep": {"tier_total": ["lots"]}}, r"sweep.tier_total: size: expected a byte size"),
    "eviction_policy": ({"sweep": {"eviction_policy": ["mru"]}}, r"sweep.eviction_policy\[0\]: 'mru' is not one of"),
    "lora_adapters": ({"sweep": {"lora_adapters": [0]}}, r"sweep.lora_adapters\[0\]: 0 is less than the minimum"),
    "lora_churn": ({"sweep": {"lora_churn": ["zipf"]}}, r"sweep.lora_churn\[0\]: 'zipf' is not one of"),
    "background_io": ({"sweep": {"background_io": ["loud"]}}, r"sweep.background_io\[0\]: 'loud' is not one of"),
    "sessions on a fixed workload": ({"sweep": {"sessions": [2]}}, r"sweep.sessions: applies to a sessioned_chat workload"),
    "idle_gap_s": ({"sweep": {"idle_gap_s": [-1]}}, r"sweep.idle_gap_s\[0\]: -1 is less than the minimum of 0"),
    "pressure_bytes": ({"sweep": {"pressure_bytes": ["x"]}}, r"sweep.pressure_bytes"),
    "telemetry_interval_ms": ({"sweep": {"telemetry_interval_ms": [5]}}, r"telemetry_interval_ms\[0\]: 5 is less than the minimum of 10"),
    "rep": ({"reps": 0}, r"reps: 0 is less than the minimum of 1"),
    "points": ({"points": [{"tier9": "1GiB"}]}, r"unknown key 'hypotheses.H900.points\[0\].tier9'"),
    "closed spawn_rate": ({"load": {"pattern": {"kind": "closed", "spawn_rate": 0}}}, r"load.pattern.spawn_rate: expected a number > 0 or null, got 0"),
    "bursty": ({"load": {"pattern": {"kind": "bursty", "burst_size": 2}}}, r"load.pattern.pause_s: required key is missing"),
    "constant": ({"load": {"pattern": {"kind": "constant", "rate": 0}}}, r"load.pattern.rate: expected a number > 0, got 0"),
    "poisson": ({"load": {"pattern": {"kind": "poisson"}}}, r"load.pattern.rate: required key is missing"),
    "gamma": ({"load": {"pattern": {"kind": "gamma", "rate": 2, "cov": -1}}}, r"load.pattern.cov: expected a number > 0"),
    "ramp": ({"load": {"pattern": {"kind": "ramp", "start_rate": 1, "end_rate": 2, "mode": "zigzag"}}}, r"load.pattern.mode: expected one of"),
    "trace": ({"load": {"pattern": {"kind": "trace", "path": "t.jsonl"}}}, r"load.workload.kind: expected 'trace' with a trace pattern"),
    "fixed_context": ({"load": {"workload": {"kind": "fixed_context", "context_tokens": 0}}}, r"load.workload.context_tokens: expected an integer >= 1, got 0"),
    "mixed_context": ({"load": {"workload": {"kind": "mixed_context", "buckets": []}}}, r"load.workload.buckets: expected a non-empty list"),
    "sessioned_chat": ({"load": {"workload": {"kind": "sessioned_chat", "sessions": 2}}}, r"load.endpoint: expected 'chat' with a sessioned_chat workload"),
    "lora": ({"load": {"lora": {"policy": "round_robin"}}}, r"load.lora: expected 'adapters'"),
    "slo": ({"load": {"slo": {"ttft_ms": -5}}}, r"load.slo.ttft_ms: expected a number > 0 or null, got -5"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_one_bad_value_is_refused_with_one_line(name):
    section, pattern = BAD[name]
    cfg = _config()
    cfg.pop("hypothesis_modules")
    load = {"concurrency": 2, "pattern": {"kind": "closed"}, "workload": FIXED, "duration_s": 1}
    load.update(copy.deepcopy(section.get("load", {})))
    h = {"stacks": ["A"], "profile": "spill", "load": load, **{k: v for k, v in section.items() if k != "load"}}
    cfg["hypotheses"] = {"H900": h}
    with pytest.raises(ConfigError, match=pattern) as info:
        validate_config(cfg)
    assert "\n" not in str(info.value)
