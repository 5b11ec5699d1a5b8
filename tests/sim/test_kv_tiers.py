"""Prefix reuse, tier-2 files (mode B) and their absence (mode A), onboarding on resume."""

from __future__ import annotations

import json
import os
import statistics
import time

from kvharness.tokens import chat_prompt_text, count_tokens

SMALL_POOL = ("--speedup", "5", "--tokens-per-block", "32", "--tier0-bytes", "512MiB", "--tier1-bytes", "256MiB",
              "--tier2-bytes", "1GiB", "--max-batch-size", "8")


def words(n: int, tag: str) -> str:
    return " ".join([f"{tag}"] + [f"{tag}w{i}" for i in range(n - 1)])


def complete(sim, prompt: str, max_tokens: int = 1):
    t = time.perf_counter()
    st, raw = sim.post("/v1/completions", json.dumps({"prompt": prompt, "max_tokens": max_tokens}).encode())
    dt = time.perf_counter() - t
    assert st == 200, raw
    return json.loads(raw)["usage"], dt


def test_multi_turn_resume_gets_history_cached(start_sim):
    sim = start_sim("--mode", "A", "--speedup", "50")
    client_msgs = [{"role": "user", "content": words(300, "q1")}]
    st, raw = sim.post("/v1/chat/completions", json.dumps({"messages": client_msgs, "max_tokens": 20}).encode())
    reply = json.loads(raw)["choices"][0]["message"]["content"]
    client_msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": words(50, "q2")}]
    st, raw = sim.post("/v1/chat/completions", json.dumps({"messages": client_msgs, "max_tokens": 4}).encode())
    usage = json.loads(raw)["usage"]
    history = count_tokens(chat_prompt_text(client_msgs[:-1]))
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert usage["prompt_tokens"] == count_tokens(chat_prompt_text(client_msgs))
    # every full block of turn 1's prompt is reused (the reply's blocks were never in a prompt)
    assert cached == (count_tokens(chat_prompt_text(client_msgs[:1])) // 32) * 32
    assert 0.85 * history <= cached <= history


def _flush(sim, n: int, tag: str):
    for i in range(n):
        complete(sim, words(2048, f"{tag}{i}"))


def test_mode_b_spills_to_tier2_files_and_onboards_from_disk(start_sim):
    sim = start_sim("--mode", "B", *SMALL_POOL)
    session = words(2048, "sess")
    _, cold = complete(sim, session)
    warm = statistics.median(complete(sim, session)[1] for _ in range(3))
    u, _ = complete(sim, session)
    assert u["prompt_tokens_details"]["cached_tokens"] == 2016  # 63 of 64 blocks (>= 1 token recomputed)
    # 6 x 64 new blocks > max(T0, T1) = 256 push the session out of both (inclusive tiers: T0 and T1 do not
    # add up), and session + fill = 448 blocks <= T2 (512): its copy, written at registration, is still on disk
    _flush(sim, 6, "fill")
    k0 = sim.metrics(kvbm=True)
    files = os.listdir(sim.tier2_dir)
    assert len(files) == 1 and os.path.getsize(sim.tier2_dir / files[0]) > 0
    assert k0["kvbm_offload_blocks_d2h"] > 0 and k0["kvbm_offload_blocks_h2d"] > 0
    u, resumed = complete(sim, session)
    k1 = sim.metrics(kvbm=True)
    m = sim.metrics()
    assert k1["kvbm_onboard_blocks_d2d"] - k0["kvbm_onboard_blocks_d2d"] >= 32
    assert u["prompt_tokens_details"]["cached_tokens"] >= 1024
    assert m["kvsim_tier2_read_bytes_total"] > 0 and m["kvsim_tier2_write_bytes_total"] > 0
    assert m["kvsim_tier2_verify_failures_total"] == 0
    assert m['kvsim_tier_fetch_seconds_count{tier="2"}'] >= 1
    assert m['kvsim_tier_hit_blocks_total{tier="2"}'] >= 32 and m['kvsim_tier_hit_blocks_total{tier="0"}'] >= 63
    assert warm < resumed < cold, (warm, resumed, cold)


def test_mode_a_loses_evicted_blocks_and_writes_no_file(start_sim, tmp_path):
    t2 = tmp_path / "a-tier2"
    t2.mkdir()
    sim = start_sim("--mode", "A", *SMALL_POOL, "--tier2-dir", str(t2))
    session = words(2048, "sess")
    complete(sim, session)
    u, _ = complete(sim, session)
    assert u["prompt_tokens_details"]["cached_tokens"] == 2016
    _flush(sim, 5, "fill")
    u, _ = complete(sim, session)
    assert u["prompt_tokens_details"]["cached_tokens"] == 0  # evicted blocks are gone
    assert os.listdir(t2) == []
    h = json.loads(sim.get("/health")[1])
    assert h["tiers"]["t1"]["blocks"] == 0 and h["tiers"]["t2"]["blocks"] == 0


def test_concurrent_reuse_under_spill_completes_and_onboards(start_sim):
    """Many users re-sending their own long prompts through a small pool: every request completes,
    hits are onboarded from host and disk while evictions run (regression: a prefix hit evicted by the
    same admission's allocation killed the engine loop)."""
    from concurrent.futures import ThreadPoolExecutor

    sim = start_sim("--mode", "B", "--speedup", "50", "--tier0-bytes", "256MiB", "--tier1-bytes", "256MiB",
                    "--tier2-bytes", "1GiB", "--max-batch-size", "16")

    def user(u):
        out = []
        for _ in range(6):
            out.append(complete(sim, words(1024, f"user{u}"), max_tokens=4)[0])
        return out

    with ThreadPoolExecutor(12) as ex:
        results = [u for r in ex.map(user, range(12)) for u in r]
    assert len(results) == 72 and all(u["completion_tokens"] == 4 for u in results)
    k = sim.metrics(kvbm=True)
    assert k["kvbm_onboard_blocks_d2d"] > 0 and k["kvbm_onboard_blocks_h2d"] + k["kvbm_onboard_blocks_d2d"] > 100
    assert sim.proc.poll() is None
