"""The queueing knee the H0 sweep relies on: p99/p50 TTFT ~1 alone, > 2 once prompts queue."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from sim_common import closed_loop, pct


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["A", "B"])
def test_p99_over_p50_rises_past_two_under_load(start_sim, mode):
    sim = start_sim("--mode", mode, "--speedup", "20", "--max-batch-size", "64", "--max-num-tokens", "8192")

    def ratio(c: int) -> float:
        recs = asyncio.run(closed_loop(sim.base, c, 2.5, 2048, 16, nonce_prefix=f"c{c}-"))
        t = [r["ttft"] for r in recs if r.get("ttft")]
        assert len(t) == len(recs) > 10
        return pct(t, 99) / pct(t, 50)

    assert ratio(1) < 1.8
    assert ratio(48) > 2.0
