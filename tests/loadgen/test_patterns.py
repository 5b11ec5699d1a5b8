"""Load patterns: arrival statistics, trace replay, ramp, the pattern interface."""

import asyncio
import json
import random
import statistics

import pytest

from kvharness.loadgen.patterns import (ClosedLoop, OpenLoop, constant_gaps, gamma_gaps, make_pattern,
                                        poisson_gaps, ramp_gaps, read_trace)
from kvharness.loadgen.spec import validate_spec
from kvharness.loadgen.workloads import TraceWorkload


def take(gen, n):
    return [next(gen) for _ in range(n)]


def test_poisson_mean_and_cov():
    gaps = take(poisson_gaps(200.0, random.Random(1)), 50_000)
    mean = statistics.fmean(gaps)
    cov = statistics.pstdev(gaps) / mean
    assert mean == pytest.approx(1 / 200, rel=0.02)
    assert cov == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("cov", [0.5, 2.0, 4.0])
def test_gamma_mean_and_cov(cov):
    gaps = take(gamma_gaps(100.0, cov, random.Random(2)), 100_000)
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.01, rel=0.03)
    assert statistics.pstdev(gaps) / mean == pytest.approx(cov, rel=0.05)


def test_constant_gaps_exact():
    assert take(constant_gaps(250.0), 3) == [0.004, 0.004, 0.004]


def test_ramp_linear_and_steps():
    # constant arrivals, rate 10 -> 30 over 10 s: the rate in the last second is ~28-30
    gen = ramp_gaps(10.0, 30.0, 10.0, "linear", 5, "constant", random.Random(0))
    t, times = 0.0, []
    while t < 12.0:
        t += next(gen)
        times.append(t)
    in_first = sum(1 for x in times if x < 1.0)
    in_last = sum(1 for x in times if 9.0 <= x < 10.0)
    after = sum(1 for x in times if 10.0 <= x < 11.0)
    assert 9 <= in_first <= 11 and 27 <= in_last <= 30 and after == 30
    gen = ramp_gaps(10.0, 50.0, 10.0, "steps", 5, "constant", random.Random(0))
    t, times = 0.0, []
    while t < 10.0:
        t += next(gen)
        times.append(t)
    per_step = [sum(1 for x in times if 2 * k <= x < 2 * (k + 1)) for k in range(5)]
    assert per_step == pytest.approx([20, 40, 60, 80, 100], abs=1)


def test_open_loop_tickets_ignore_completions():
    async def go():
        p = OpenLoop(constant_gaps(100.0))
        p.start(1_000)
        return [(await p.next()).sched_ns for _ in range(4)]

    assert asyncio.run(go()) == [1_000, 10_001_000, 20_001_000, 30_001_000]


def test_closed_loop_next_due_at_completion_plus_think():
    async def go():
        p = ClosedLoop(2, think_time_s=0.5)
        p.start(0)
        a, b = await p.next(), await p.next()
        p.completed(b, 7_000, True)
        c = await p.next()
        return a.sched_ns, b.sched_ns, c.sched_ns, c.user

    assert asyncio.run(go()) == (0, 0, 7_000 + 500_000_000, 1)


def test_closed_loop_spawns_users_at_spawn_rate():
    async def go():
        p = ClosedLoop(4, spawn_rate=1000.0)  # 1 ms apart
        p.start(0)
        first = await p.next()
        p.completed(first, 1_500_000, True)  # user 0 done before users 2 and 3 have started
        return [(t.sched_ns, t.user) for t in [await p.next() for _ in range(4)]]

    # due order is kept while spawning: user 0's second request (1.5 ms) comes between users 1 and 2
    assert asyncio.run(go()) == [(1_000_000, 1), (1_500_000, 0), (2_000_000, 2), (3_000_000, 3)]


def test_closed_loop_spawn_rate_default_and_null():
    spec = validate_spec({"model": "m", "pattern": {"kind": "closed", "concurrency": 3},
                          "workload": {"kind": "fixed_context", "context_tokens": 8}, "duration_s": 1})
    assert spec["pattern"]["spawn_rate"] == 10_000.0
    p = make_pattern(spec)
    p.start(0)
    assert [t for t, _u in p.free.items] == [0, 100_000, 200_000]
    spec["pattern"]["spawn_rate"] = None
    p = make_pattern(spec)
    p.start(0)
    assert [t for t, _u in p.free.items] == [0, 0, 0]
    with pytest.raises(ValueError, match="spawn_rate"):
        validate_spec({"model": "m", "pattern": {"kind": "closed", "concurrency": 3, "spawn_rate": 0},
                       "workload": {"kind": "fixed_context", "context_tokens": 8}, "duration_s": 1})


TRACE = [
    {"timestamp": 0, "input_length": 1030, "output_length": 5, "hash_ids": [0, 1, 2]},
    {"timestamp": 250, "input_length": 700, "output_length": 3, "hash_ids": [0, 1]},
    {"timestamp": 1000, "input_length": 600, "output_length": 2, "hash_ids": [7, 8]},
]


def write_trace(tmp_path, rows):
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trace_spec(path, **pattern):
    return validate_spec({"model": "m", "pattern": {"kind": "trace", "path": path, **pattern},
                          "workload": {"kind": "trace", "block_tokens": 512}})


def test_trace_replay_timestamps(tmp_path):
    path = write_trace(tmp_path, TRACE)
    spec = trace_spec(path, time_scale=0.5)

    async def go():
        p = make_pattern(spec)
        p.start(10)
        out = []
        while (t := await p.next()) is not None:
            out.append(t.sched_ns)
        return out

    assert asyncio.run(go()) == [10, 10 + 125_000_000, 10 + 500_000_000]


def test_trace_prompts_share_blocks_by_hash_id(tmp_path):
    spec = trace_spec(write_trace(tmp_path, TRACE))
    w = TraceWorkload(spec)

    class T:
        def __init__(self, row):
            self.item, self.session_id, self.turn, self.phase = row, None, None, None

    prompts = [json.loads(w.build(T(r)).body)["prompt"].split() for r in TRACE]
    assert [len(p) for p in prompts] == [1030, 700, 600]  # exact input lengths
    assert prompts[0][:700] == prompts[1]  # hash ids 0,1 -> the same 1024 tokens, cut at 700
    assert prompts[0][:512] != prompts[2][:512] and prompts[2][0] != prompts[0][0]
    bodies = [json.loads(w.build(T(r)).body) for r in TRACE]
    assert [b["max_tokens"] for b in bodies] == [5, 3, 2]


def test_trace_window_and_gzip(tmp_path):
    import gzip

    path = tmp_path / "trace.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in TRACE))
    assert [r["timestamp"] for r in read_trace(str(path))] == [0, 250, 1000]
    assert [r["timestamp"] for r in read_trace(str(path), start_s=0.2, window_s=0.8)] == [250]  # [200, 1000) ms
    assert [r["timestamp"] for r in read_trace(str(path), window_s=1.0)] == [0, 250]


def test_shipped_conversation_trace_window():
    # the 15-minute window H10 replays: 2,728 requests, 73,135 hash ids (data/traces/README.md)
    rows = read_trace("data/traces/mooncake_conversation.jsonl.gz", window_s=900)
    assert len(rows) == 2728 and sum(len(r["hash_ids"]) for r in rows) == 73135


def test_trace_block_mapping_keeps_full_blocks_and_scales_tokens(tmp_path):
    spec = validate_spec({"model": "m", "pattern": {"kind": "trace", "path": write_trace(tmp_path, TRACE)},
                          "workload": {"kind": "trace", "block_tokens": 32, "trace_block_tokens": 512}})
    w = TraceWorkload(spec)

    class T:
        def __init__(self, row):
            self.item, self.session_id, self.turn, self.phase = row, None, None, None

    bodies = [json.loads(w.build(T(r)).body) for r in TRACE]
    prompts = [b["prompt"].split() for b in bodies]
    # 1030 = 2 x 512 + 6 -> 2 x 32 + 6 * 32 // 512 = 64; 700 = 512 + 188 -> 32 + 11; 600 = 512 + 88 -> 32 + 5
    assert [len(p) for p in prompts] == [64, 43, 37]
    assert [len(r["input_length"] // 512 * [0]) for r in TRACE] == [len(p) // 32 for p in prompts]  # full blocks kept
    assert prompts[0][:43] == prompts[1] and prompts[0][:32] != prompts[2][:32]  # equal ids, equal blocks
    assert [b["max_tokens"] for b in bodies] == [1, 1, 1]  # 5, 3, 2 x 32/512, at least 1


def test_trace_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: timestamp"):
        read_trace(str(path))


def test_trace_pattern_requires_trace_workload():
    from kvharness.loadgen.spec import SpecError
    with pytest.raises(SpecError, match="workload.kind"):
        validate_spec({"model": "m", "pattern": {"kind": "trace", "path": "x"},
                       "workload": {"kind": "fixed_context", "context_tokens": 5}})


@pytest.mark.parametrize("workload", [
    {"kind": "fixed_context", "context_tokens": 300},
    {"kind": "fixed_context", "context_tokens": 300, "shared_prefix_ratio": 0.3, "prefix_groups": 3},
    {"kind": "mixed_context"},
])
def test_prompts_use_only_vocabulary_words_and_unique_nonces(workload):
    from kvharness.loadgen.workloads import VOCAB, make_workload

    spec = validate_spec({"model": "m", "pattern": {"kind": "closed", "concurrency": 1}, "workload": workload,
                          "max_requests": 1})
    w = make_workload(spec)
    prompts = [json.loads(w.build(None).body)["prompt"].split() for _ in range(400)]
    vocab = set(VOCAB)
    assert all(word in vocab for p in prompts for word in p)  # one token each, on real tokenizers too
    start = 90 if workload.get("shared_prefix_ratio") else 0
    assert len({tuple(p[start:start + 6]) for p in prompts}) == 400


def test_trace_blocks_are_vocabulary_words(tmp_path):
    from kvharness.loadgen.workloads import VOCAB

    spec = trace_spec(write_trace(tmp_path, TRACE))
    w = TraceWorkload(spec)

    class T:
        item, session_id, turn, phase = TRACE[0], None, None, None

    assert set(json.loads(w.build(T()).body)["prompt"].split()) <= set(VOCAB)
