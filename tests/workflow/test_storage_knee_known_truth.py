"""Known truth for H2B's storage knee: on tests/workflow/storage_knee.yaml the tier-2 fetch time and the
TTFT of every request follow from the simulator's parameters (configs/models.yaml, the engine's block
size), so the first context where fetch >= 50 % of TTFT is known before the run. Derived here from those
parameters (never from the code under test); the run must put the knee there. About 40 s on 2 busy cores.
"""

import csv
from pathlib import Path

import pytest
import yaml

from kvharness.units import parse_bytes

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("storage_knee.yaml")
CFG = yaml.safe_load(CONFIG.read_text())
DEFAULTS = yaml.safe_load((ROOT / "configs/config.yaml").read_text())
MODELS = yaml.safe_load((ROOT / "configs/models.yaml").read_text())

pytestmark = pytest.mark.slow


def modelled(context: int) -> tuple[float, float]:
    """(tier-2 fetch ms, TTFT ms) of a request whose whole prompt is on tier 2, in wall time.

    The engine onboards every full block but the last one (at least one token is recomputed), over the
    G2<->G3 link at its bandwidth; then one prefill step computes the remaining tokens: step overhead +
    the larger of the memory bound (weights + the computed context's KV, at bandwidth x efficiency) and
    the compute bound (tokens x prefill time + attention pairs); the request's overhead comes first.
    Every modelled time is divided by the speedup."""
    hw = MODELS["hardware"][DEFAULTS["hardware"]]
    model = MODELS["models"][DEFAULTS["model"]]
    prec = {k: float(v) for k, v in model["precisions"][DEFAULTS["precision"]].items()}  # YAML 1.1 reads 7.0e9 as text
    hw = {**{k: float(hw[k]) for k in ("memory_bandwidth_bytes_per_s", "step_overhead_s", "request_overhead_s")},
          "g2_g3": float(hw["tier_bandwidth_bytes_per_s"]["g2_g3"])}
    tpb = DEFAULTS["engine"]["tokens_per_block"]
    kv = 2 * model["layers"] * model["kv_heads"] * model["head_dim"] * int(prec["kv_dtype_bytes"])
    blocks = (context - 1) // tpb
    fetch_s = blocks * tpb * kv / hw["g2_g3"]
    computed, chunk = blocks * tpb, context - blocks * tpb
    memory = (prec["weight_bytes"] + computed * kv) / (hw["memory_bandwidth_bytes_per_s"] * prec["decode_efficiency"])
    compute = chunk * prec["prefill_s_per_token"] + chunk * (computed + chunk / 2) * prec["attention_s_per_token2"]
    ttft_s = hw["request_overhead_s"] + fetch_s + hw["step_overhead_s"] + max(memory, compute)
    speedup = CFG["sim"]["speedup"]
    return 1000 * fetch_s / speedup, 1000 * ttft_s / speedup


def test_config_sends_every_request_to_tier_2():
    """The premise, from the config alone: T0 holds one prompt and its output but not two, so the next
    prompt pushes a finished one out of T0; the two after that push at least T1's worth out of T1."""
    kv = 2 * 32 * 8 * 128  # llama-3.1-8b fp8, bytes per token
    load = CFG["hypotheses"]["H2B"]["load"]
    for p in CFG["hypotheses"]["H2B"]["points"]:
        prompt, t0, t1 = p["context_tokens"] * kv, parse_bytes(p["tier0"]), parse_bytes(p["tier1"])
        assert prompt + load["workload"]["output_tokens"] * kv <= t0 < 2 * prompt
        assert (load["workload"]["prefix_groups"] - 2) * (2 * prompt - t0) > t1


@pytest.fixture(scope="module")
def run(snakemake_workdir):
    return snakemake_workdir("storage_knee", CONFIG, ["results/H2B/summary.csv"], cores=1, timeout=300)


def table(run, name):
    with open(run / f"results/H2B/{name}.csv") as fh:
        return list(csv.DictReader(fh))


def num(v):
    return None if v in ("", None) else float(v)


def test_h2b_storage_knee_is_where_the_model_puts_it(run):
    contexts = sorted(p["context_tokens"] for p in CFG["hypotheses"]["H2B"]["points"])
    shares = {c: modelled(c)[0] / modelled(c)[1] for c in contexts}
    expected = next(c for c in contexts if shares[c] >= 0.5)
    assert expected != contexts[0] and shares[contexts[contexts.index(expected) - 1]] < 0.5  # bracketed by the sweep
    rows = {int(r["context_tokens"]): r for r in table(run, "summary")}
    for c in contexts:
        fetch, _ = modelled(c)
        lo, hi = num(rows[c]["tier2_fetch_ms_p95_lo"]), num(rows[c]["tier2_fetch_ms_p95_hi"])
        # the stack's fetch histogram puts the p95 in the bucket of the modelled fetch (event-loop wake-ups
        # only ever add a little)
        assert lo is not None and lo <= fetch + 2.0 and fetch <= hi, (c, fetch, lo, hi)
    knee = {k["method"]: k for k in table(run, "storage_knee")}["stack metric"]
    assert knee["reported"] == "True"
    assert int(float(knee["knee_at"])) == expected, (knee, shares)
    start = int(float(knee["knee_from"]))  # a point whose bucket straddles the line may come before the knee
    assert contexts.index(start) <= contexts.index(expected)
    assert all(shares[c] < 0.5 for c in contexts if c < expected)
