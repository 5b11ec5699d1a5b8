"""The queueing knee the H0 sweep relies on: p99/p50 TTFT ~1 alone, > 2 once prompts queue."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from sim_common import closed_loop, pct

from kvharness.analysis.knee import u_work


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


# -- H0's U_work, known truth through u_work() (issue 22) ------------------------------------------------
# A simulator profile made for a knee that follows from its parameters: every engine step costs the same
# (memory-bound: step overhead + weights / bandwidth; KV reads and prefill compute are negligible), and a
# request's fixed overhead is large beside a step.
KNEE_MODELS = {
    "hardware": {"knee-box": {"memory_bandwidth_bytes_per_s": 100.0e9, "decode_efficiency": 1.0,
                              "step_overhead_s": 0.001, "request_overhead_s": 0.050}},
    "models": {"knee-model": {"max_context_tokens": 4096, "layers": 1, "kv_heads": 1, "head_dim": 64, "precisions": {
        "fp8": {"weight_bytes": 1.0e9, "kv_dtype_bytes": 1, "per_sequence_s": 0.0, "prefill_s_per_token": 1.0e-6,
                "attention_s_per_token2": 0.0}}}},
}
SLOTS, PROMPT, OUTPUT, SPEEDUP, REQUESTS = 16, 128, 64, 10, 1000
SWEEP = (8, 16, 18, 20)


@pytest.mark.slow
def test_u_work_of_a_simulator_whose_knee_follows_from_its_batch_size(start_sim, tmp_path):
    """The known answer, from the profile's numbers (by hand, not through the simulator's timing code):

    * one step: s = 1 ms overhead + 1e9 B / 100e9 B/s = 11 ms (+ < 0.01 ms of KV reads; 20 x 128 prefill
      tokens x 1 us = 2.6 ms of compute stays under the memory time), so s_min = 11.0 ms, s_max < 11.1 ms;
    * at concurrency c <= max_batch_size B = 16 no request waits for a slot (c x 128 prompt tokens fit the
      8,192-token step budget, the pool holds every sequence): a request becomes admissible 50 ms after it
      arrives and gets its first token at the end of the first whole step after that, so every TTFT lies in
      [50 + s_min, 50 + 2 s_max] = [61, 72.2] ms and p99/p50 <= 1.19 < 2: **stable** (8 and 16);
    * at B < c < 1.5 B, k = c - B users find every slot busy. Requests with the same prompt length and 64
      output tokens that start together end together, so the engine serves rounds of B: each round the k
      waiting requests and B - k fresh ones are admitted and k fresh ones wait for the next round's end,
      up to a whole service of 64 steps = 704 ms. k / B is 12.5 % (c = 18) and 25 % (c = 20) of requests:
      more than 1 % wait, so p99 is a waiting request's TTFT; fewer than 50 %, so p50 is an unqueued one
      (<= 72 ms); a wait of even a quarter of a service (176 ms) is > 2 x 72 ms: **unstable** (18 and 20).
    * U_work is the highest swept step that is stable together with the next one: 8 (16 is stable but 18
      is not); the knee (two consecutive unstable steps) starts at 18.
    Wall times are modelled times / speedup; the harness's own load generator measures them."""
    step_ms = 1.0 + 1e9 / 100e9 * 1e3
    fastest, slowest = 50.0 + step_ms, 50.0 + 2 * (step_ms + 0.1)
    assert slowest / fastest < 2 and OUTPUT * step_ms / 4 > 2 * slowest  # the profile does what it was made for
    expected_u_work = max(c for c, nxt in zip(SWEEP, SWEEP[1:]) if nxt <= SLOTS)
    expected_knee = min(c for c in SWEEP if c > SLOTS)
    assert (expected_u_work, expected_knee) == (8, 18)

    models = tmp_path / "knee-models.yaml"
    models.write_text(yaml.safe_dump(KNEE_MODELS))
    sim = start_sim("--mode", "A", "--speedup", str(SPEEDUP), "--models-config", str(models), "--hardware", "knee-box",
                    "--model-profile", "knee-model", "--precision", "fp8", "--max-batch-size", str(SLOTS),
                    "--max-num-tokens", "8192")
    steps = []
    for c in SWEEP:
        out = tmp_path / f"c{c}.jsonl"
        subprocess.run([sys.executable, "-m", "kvharness", "loadgen", "--base-url", sim.base, "--model", "knee-model",
                        "--concurrency", str(c), "--context-tokens", str(PROMPT), "--output-tokens", str(OUTPUT),
                        "--max-requests", str(REQUESTS), "--duration-s", "120", "--out", str(out), "--format", "none",
                        "--first-request", "skip"], check=True, timeout=180)
        ttft = [r["lat_ttft_ms"] for r in map(json.loads, out.read_text().splitlines()) if r.get("lat_ttft_ms") is not None]
        assert len(ttft) == REQUESTS
        if c <= SLOTS:  # the simulator keeps the model's clock: an unqueued TTFT is 61-72 ms / 10 (+ client time)
            ttft_sorted = sorted(ttft)
            assert fastest / SPEEDUP <= ttft_sorted[len(ttft) // 2] <= slowest / SPEEDUP + 3.0, (c, ttft_sorted[len(ttft) // 2])
        steps.append({"concurrency": c, "_ttft_ms": ttft})
    result = u_work(steps)
    assert result["stable"] == {8: True, 16: True, 18: False, 20: False}, result
    assert (result["u_work"], result["u_work_high"], result["knee_at"]) == (expected_u_work, expected_u_work, expected_knee)
    assert not result["censored"] and result["undecided"] == []
