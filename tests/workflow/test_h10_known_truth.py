"""Known truth for H10 (tier sizing on production traffic): the hit fractions the simulated stacks
measure on a Mooncake trace window agree with an independent model of their tiers, computed here from
the trace file and the configured capacities in blocks (never with the code under test), within 2
percentage points at every swept size, and the capacity curve marks the size the model marks.

The model is the documented tier semantics (docs/simulator.md, "KV tiers"), request by request in
arrival order: LRU tiers; a prompt's prefix is matched in T0 and continued in T1, then T2; every
block of the prompt is then used in T0, and a block new to T0 is registered: copied to T1 (a copy
already there is refreshed), and a block new to T1 is copied on to T2. Stack A is T0 alone with
T0+T1's capacity. Prompts are mapped to 32-token blocks as docs/loadgen.md says (full trace blocks kept;
the last prompt block is never matched when the prompt fills it exactly, one token is always computed).
"""

import csv
import gzip
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import yaml

from kvharness.units import parse_bytes

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("trace_tiny.yaml")
CFG = yaml.safe_load(CONFIG.read_text())
H = CFG["hypotheses"]["H10"]
_M = yaml.safe_load((ROOT / "configs/models.yaml").read_text())["models"]["llama-3.1-8b"]
KV_PER_TOKEN = 2 * _M["layers"] * _M["kv_heads"] * _M["head_dim"] * _M["precisions"]["fp8"]["kv_dtype_bytes"]
TPB = yaml.safe_load((ROOT / "configs/config.yaml").read_text())["engine"]["tokens_per_block"]
BLOCK = KV_PER_TOKEN * TPB
TOLERANCE_PP = 2.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class LRU:
    def __init__(self, cap):
        self.cap, self.d = cap, OrderedDict()

    def __contains__(self, h):
        return h in self.d

    def use(self, h):
        """Insert or refresh ``h``; True when it was not there (an insertion)."""
        if h in self.d:
            self.d.move_to_end(h)
            return False
        if self.cap <= 0:
            return False
        self.d[h] = None
        if len(self.d) > self.cap:
            self.d.popitem(last=False)
        return True


def window_rows():
    p = H["load"]["pattern"]
    with gzip.open(ROOT / p["path"], "rt") as fh:
        rows = sorted((json.loads(line) for line in fh if line.strip()), key=lambda r: r["timestamp"])
    lo = rows[0]["timestamp"]
    return [r for r in rows if r["timestamp"] - lo < p["window_s"] * 1000]


def model_hit_pct(rows, t0, t1=0, t2=0):
    """Prefix-hit percentage of prompt blocks over the window for tiers of t0/t1/t2 blocks."""
    tb = H["load"]["workload"]["trace_block_tokens"]
    T0, T1, T2 = LRU(t0), LRU(t1), LRU(t2)
    hit = total = 0
    for r in rows:
        n_in = r["input_length"]
        n = max(1, (n_in // tb) * TPB + (n_in % tb) * TPB // tb)  # the mapped prompt
        hs = r["hash_ids"][: n_in // tb]
        limit = min(len(hs), (n - 1) // TPB)
        total += len(hs)
        i = 0
        while i < limit and hs[i] in T0:
            i += 1
        while i < limit and (hs[i] in T1 or hs[i] in T2):
            i += 1
        hit += i
        for h in hs:
            if T0.use(h) and (T1.use(h) if t1 else True):
                T2.use(h)
    return 100.0 * hit / total


@pytest.fixture(scope="module")
def run(snakemake_workdir):
    return snakemake_workdir("h10", CONFIG, ["results/H10/summary.csv"], cores=1, timeout=500)


def table(run, name):
    with open(run / f"results/H10/{name}.csv") as fh:
        return list(csv.DictReader(fh))


def test_h10_hit_fractions_match_the_tier_model_and_the_marked_size(run):
    rows = window_rows()
    t0, t1 = (parse_bytes(CFG["profiles"]["trace"][k]) // BLOCK for k in ("tier0", "tier1"))
    sizes = sorted(parse_bytes(p["tier2"]) for p in H["points"])
    model_b = {s: model_hit_pct(rows, t0, t1, s // BLOCK) for s in sizes}
    model_a = model_hit_pct(rows, t0 + t1)
    points = table(run, "summary")
    measured_b = {int(p["tier2_bytes"]): float(p["hit_pct"]) for p in points if p["role"] == "B"}
    (a,) = [p for p in points if p["role"] == "A"]
    assert set(measured_b) == set(sizes)
    for s in sizes:
        assert abs(measured_b[s] - model_b[s]) <= TOLERANCE_PP, (s // BLOCK, measured_b[s], model_b[s])
    assert abs(float(a["hit_pct"]) - model_a) <= TOLERANCE_PP, (float(a["hit_pct"]), model_a)
    assert int(a["n_requests"]) == len(rows)
    # the capacity curve's mark: the smallest T2 within 5 % of the largest swept (unbounded) one, by the model
    target = 0.95 * model_b[sizes[-1]]
    model_mark = next(s for s in sizes if model_b[s] >= target)
    curve = table(run, "curve")
    assert [int(c["tier2_bytes"]) for c in curve if c["marked"] == "True"] == [model_mark]
    verdict = json.loads((run / "results/H10/verdict.json").read_text())
    assert f"{model_mark // BLOCK:,} blocks" in verdict["verdict"]
    trace_gib = model_mark // BLOCK * H["load"]["workload"]["trace_block_tokens"] * KV_PER_TOKEN / 1024**3
    assert f"{trace_gib:,.0f} GiB of llama-3.1-8b fp8" in verdict["verdict"]
    assert (run / "results/H10/capacity.png").stat().st_size > 0
