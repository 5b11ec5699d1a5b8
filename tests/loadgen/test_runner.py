"""End to end against the in-process SSE server: records, errors, caps, sessions."""

import asyncio
import io
import json

import pytest

from kvharness.loadgen.runner import Runner
from kvharness.loadgen.spec import validate_spec


def run(spec_raw: dict):
    spec = validate_spec(spec_raw)
    out = io.StringIO()
    runner = Runner(spec, out)
    summary = asyncio.run(runner.run())
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    return runner, summary, lines


def spec_for(server, **over):
    s = {"base_url": server.base_url, "model": "m", "pattern": {"kind": "closed", "concurrency": 4},
         "workload": {"kind": "fixed_context", "context_tokens": 64, "output_tokens": 4},
         "max_requests": 20, "labels": {"stack": "test"}}
    s.update(over)
    return s


CONTRACT_FIELDS = {"ts", "sched_ns", "sent_ns", "first_byte_ns", "first_token_ns", "end_ns", "lat_ttft_ms",
                   "lat_ttfb_ms", "lat_e2e_ms", "lat_tpot_ms", "client_queue_ms", "itl_ms", "prompt_tokens",
                   "output_tokens", "cached_tokens", "rc", "error_class", "stack", "model", "concurrency",
                   "context_tokens", "bucket", "adapter_id", "session_id", "turn", "phase", "request_id"}


def test_closed_loop_records_and_exact_prompt_length(server):
    server.behaviour.update(ttft_s=0.02, itl_s=0.005)
    runner, summary, recs = run(spec_for(server))
    assert len(recs) == 20 and summary["n_ok"] == 20
    for r in recs:
        assert CONTRACT_FIELDS <= set(r)
        assert r["rc"] == 0 and r["prompt_tokens"] == 64 and r["output_tokens"] == 4
        assert r["stack"] == "test" and r["concurrency"] == 4
        assert 20 <= r["lat_ttft_ms"] < 1000 and len(r["itl_ms"]) == 3  # wide: CI machines are shared
        assert r["lat_ttfb_ms"] <= r["lat_ttft_ms"] <= r["lat_e2e_ms"]
    assert server.max_open <= 4
    # the nonce is the FIRST word and differs per request
    firsts = [req["prompt"].split()[0] for req in server.requests]
    assert len(set(firsts)) == 20
    assert all(req["stream_options"] == {"include_usage": True} for req in server.requests)


def test_nonce_none_gives_identical_prompts(server):
    run(spec_for(server, workload={"kind": "fixed_context", "context_tokens": 32, "output_tokens": 2,
                                    "nonce": "none"}))
    assert len({r["prompt"] for r in server.requests}) == 1


def test_chat_role_first_event_ignored(server):
    server.behaviour.update(ttft_s=0.1, role_first=True)
    _, _, recs = run(spec_for(server, endpoint="chat", max_requests=4))
    for r in recs:
        assert r["lat_ttfb_ms"] + 30 < r["lat_ttft_ms"] and r["lat_ttft_ms"] >= 100
        assert r["prompt_tokens"] == 64  # "<user>" + 63 words


def test_mixed_context_buckets(server):
    _, summary, recs = run(spec_for(server, workload={"kind": "mixed_context", "output_tokens": 2},
                                    pattern={"kind": "closed", "concurrency": 8}, max_requests=200))
    names = {"short": (200, 500), "medium": (800, 1500), "long": (2500, 3200)}
    for r in recs:
        lo, hi = names[r["bucket"]]
        assert lo <= r["context_tokens"] <= hi and r["prompt_tokens"] == r["context_tokens"]
    share = sum(r["bucket"] == "short" for r in recs) / len(recs)
    assert 0.45 < share < 0.75


@pytest.mark.parametrize("behaviour, cls", [({"status": 500}, "http_500"), ({"status": 429}, "http_429"),
                                            ({"garbage": True}, "parse"), ({"drop_after": 1}, "disconnect")])
def test_errors_are_classified_never_fatal(server, behaviour, cls):
    server.behaviour.update(behaviour)
    _, summary, recs = run(spec_for(server, max_requests=6))
    assert len(recs) == 6
    assert {r["error_class"] for r in recs} == {cls}
    assert all(r["rc"] != 0 for r in recs)
    assert summary["error_classes"] == {cls: 6}


@pytest.mark.parametrize("stamps", ["loop", "kernel"])
def test_timeout_and_connect_errors(server, stamps):
    server.behaviour.update(ttft_s=0.5)
    _, _, recs = run(spec_for(server, max_requests=2, request_timeout_s=0.1, timestamps=stamps))
    assert {r["error_class"] for r in recs} == {"timeout"} and all(r["rc"] == -1 for r in recs)
    _, _, recs = run(spec_for(server, base_url="http://127.0.0.1:9", max_requests=2, timestamps=stamps))
    assert {r["error_class"] for r in recs} == {"connect"}


def test_max_errors_stops_the_run(server):
    server.behaviour.update(status=503)
    runner, summary, recs = run(spec_for(server, max_requests=1000, max_errors=5,
                                         pattern={"kind": "closed", "concurrency": 1}))
    assert runner.stop_reason == "max_errors" and len(recs) == 5


def test_bursty_pattern(server):
    server.behaviour.update(ttft_s=0.01)
    runner, summary, recs = run(spec_for(server, pattern={"kind": "bursty", "concurrency": 2, "burst_size": 4,
                                                          "pause_s": 0.1}, max_requests=8))
    assert len(recs) == 8 and server.max_open <= 2
    recs.sort(key=lambda r: r["sched_ns"])
    first_burst_end = max(r["end_ns"] for r in recs[:4])
    # due pause_s after the client saw the burst's last end: at or just after the kernel's stamp of it
    assert 0 <= recs[4]["sched_ns"] - first_burst_end - 100_000_000 < 10_000_000  # loose: a busy 2-core box


def test_duration_and_warmup_windows(server):
    server.behaviour.update(ttft_s=0.01)
    runner, summary, recs = run(spec_for(server, max_requests=None, duration_s=0.5, warmup_s=0.2,
                                         cooldown_s=0.1))
    windows = {r["window"] for r in recs}
    assert windows == {"warmup", "measure", "cooldown"}
    assert summary["n_requests"] == sum(r["window"] == "measure" for r in recs)
    assert runner.stop_reason == "duration"


def test_usage_cached_tokens_and_kv_hit(server):
    server.behaviour.update(cached_tokens=32)
    _, summary, recs = run(spec_for(server, max_requests=4))
    assert all(r["cached_tokens"] == 32 for r in recs)
    assert summary["kv_hit_pct"] == 50.0


def test_sessions_resume_turn_contains_full_history(server):
    spec = spec_for(server, endpoint="chat", max_requests=None, pattern={"kind": "closed", "concurrency": 2},
                    workload={"kind": "sessioned_chat", "sessions": 3, "turns": 2, "first_turn_tokens": 40,
                              "turn_tokens": 10, "output_tokens": 3, "idle_s": 0.2, "resume_turns": 1,
                              "pressure": {"rate": 50, "context_tokens": 30, "output_tokens": 1}})
    runner, summary, recs = run(spec)
    by_phase = {}
    for r in recs:
        by_phase.setdefault(r["phase"], []).append(r)
    assert len(by_phase["build"]) == 6 and len(by_phase["resume"]) == 3
    assert 2 <= len(by_phase["pressure"]) <= 25
    last_build = max(r["end_ns"] for r in by_phase["build"])
    assert min(r["sched_ns"] for r in by_phase["resume"]) >= last_build + 200_000_000
    # find each session's requests on the server: the resume turn resends the whole history
    per_session = {}
    for body in server.requests:
        per_session.setdefault(body["messages"][0]["content"], []).append(body["messages"])
    sessions = [v for v in per_session.values() if len(v) == 3]
    assert len(sessions) == 3
    for turns in sessions:
        turns.sort(key=len)
        t0, t1, t2 = turns
        assert len(t0) == 1 and len(t1) == 3 and len(t2) == 5
        assert t1[:1] == t0
        assert t2[:3] == t1  # resume = the full history (user, assistant, user) + its reply + new user text
        assert t1[1]["role"] == "assistant" and t1[1]["content"] == "w0 w1 w2 "
    for r in by_phase["resume"]:
        assert r["context_tokens"] == r["prompt_tokens"]


def test_sessions_pressure_count_finishes_before_the_resume(server):
    server.behaviour.update(ttft_s=0.02)
    spec = spec_for(server, endpoint="chat", max_requests=None, pattern={"kind": "closed", "concurrency": 2},
                    workload={"kind": "sessioned_chat", "sessions": 2, "turns": 1, "first_turn_tokens": 40,
                              "turn_tokens": 10, "output_tokens": 3, "idle_s": 0.05, "resume_turns": 1,
                              "pressure": {"count": 5, "context_tokens": 30, "output_tokens": 1}})
    _, _, recs = run(spec)
    pressure = [r for r in recs if r["phase"] == "pressure"]
    resume = [r for r in recs if r["phase"] == "resume"]
    assert len(pressure) == 5 and len(resume) == 2  # exactly `count`, not a Poisson draw
    gaps = sorted(r["sched_ns"] for r in pressure)
    assert len({b - a for a, b in zip(gaps, gaps[1:])}) == 1  # evenly spread over the idle gap
    assert min(r["sched_ns"] for r in resume) >= max(r["end_ns"] for r in pressure)  # all done before the resume


def test_sessions_cold_resume_shares_no_prefix_but_keeps_lengths(server):
    spec = spec_for(server, endpoint="chat", max_requests=None, pattern={"kind": "closed", "concurrency": 1},
                    workload={"kind": "sessioned_chat", "sessions": 2, "turns": 2, "first_turn_tokens": 40,
                              "turn_tokens": 10, "output_tokens": 3, "resume_turns": 1, "cold_resume": True})
    _, _, recs = run(spec)
    bodies = [b["messages"] for b in server.requests]
    builds = [m for m in bodies if len(m) == 3]  # second build turn: user, assistant, user
    resumes = [m for m in bodies if len(m) == 5]
    assert len(builds) == 2 and len(resumes) == 2
    firsts = {m[0]["content"] for m in builds}
    for m in resumes:
        assert m[0]["content"] not in firsts  # a new first message: nothing of the history is reused
        assert m[0]["content"].split()[0] not in {f.split()[0] for f in firsts}
    lens = sorted(r["prompt_tokens"] for r in recs if r["phase"] == "resume")
    warm = sorted(r["context_tokens"] for r in recs if r["phase"] == "resume")
    assert lens == warm  # same lengths as a warm resume would send


def test_sessions_first_turn_buckets_fix_each_sessions_length(server):
    buckets = [{"name": "s", "min_tokens": 20, "max_tokens": 30, "weight": 0.5},
               {"name": "l", "min_tokens": 200, "max_tokens": 240, "weight": 0.5}]
    spec = spec_for(server, endpoint="chat", max_requests=None, pattern={"kind": "closed", "concurrency": 4},
                    workload={"kind": "sessioned_chat", "sessions": 16, "turns": 1, "output_tokens": 2,
                              "resume_turns": 0, "first_turn_buckets": buckets})
    _, _, recs = run(spec)
    again = run(spec)[2]
    lengths = {r["session_id"]: r["prompt_tokens"] for r in recs}
    assert lengths == {r["session_id"]: r["prompt_tokens"] for r in again}  # seeded per session
    assert all(20 <= n <= 30 or 200 <= n <= 240 for n in lengths.values())
    assert any(n <= 30 for n in lengths.values()) and any(n >= 200 for n in lengths.values())


def test_lora_round_robin_as_model_and_adapter_id(server):
    _, _, recs = run(spec_for(server, max_requests=6, pattern={"kind": "closed", "concurrency": 1},
                              lora={"adapters": ["a", "b", "c"], "policy": "round_robin"}))
    assert [r["model"] for r in server.requests] == ["a", "b", "c", "a", "b", "c"]
    assert [r["adapter_id"] for r in recs] == ["a", "b", "c", "a", "b", "c"]
    server.requests.clear()
    run(spec_for(server, max_requests=3, pattern={"kind": "closed", "concurrency": 1},
                 lora={"adapters": ["a", "b"], "send_as": "adapter_id"}))
    assert [(r["model"], r["adapter_id"]) for r in server.requests] == [("m", "a"), ("m", "b"), ("m", "a")]


def test_open_loop_cap_shows_client_queue(server):
    server.behaviour.update(ttft_s=0.05)
    _, summary, recs = run(spec_for(server, pattern={"kind": "constant", "rate": 200, "max_in_flight": 2},
                                    max_requests=10))
    assert server.max_open <= 2
    assert max(r["client_queue_ms"] for r in recs) > 100
    for r in recs:
        assert r["lat_ttft_ms"] >= r["client_queue_ms"] + 45


def test_shared_prefix_ratio(server):
    run(spec_for(server, max_requests=8, workload={"kind": "fixed_context", "context_tokens": 100,
                                                   "output_tokens": 1, "shared_prefix_ratio": 0.5,
                                                   "prefix_groups": 2}))
    prompts = [r["prompt"].split() for r in server.requests]
    assert all(len(p) == 100 for p in prompts)
    groups = {}
    for p in prompts:
        groups.setdefault(p[0], []).append(p)
    assert len(groups) == 2
    for members in groups.values():
        assert all(m[:50] == members[0][:50] for m in members)
        assert len({m[50] for m in members}) == len(members)  # the nonce follows the shared prefix


def test_thousand_concurrent_users_no_cap_no_fd_error(server):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))  # client + server share this process
    # Every response is held 2 s, so all 1000 connections must be open at once even on a slow, busy box.
    server.behaviour.update(ttft_s=2.0, itl_s=0.01)
    runner, summary, recs = run(spec_for(server, pattern={"kind": "closed", "concurrency": 1000},
                                         workload={"kind": "fixed_context", "context_tokens": 8, "output_tokens": 2},
                                         max_requests=1000))
    assert summary["n_ok"] == 1000, summary["error_classes"]
    assert server.max_open == 1000  # all in flight at once: no hidden connection cap
    assert summary["max_connections"] == 1000


@pytest.mark.parametrize("transport, stamps", [("raw", "loop"), ("raw", "kernel"), ("aiohttp", "loop")])
def test_transports_agree(server, transport, stamps):
    server.behaviour.update(ttft_s=0.1, itl_s=0.005, cached_tokens=0)
    _, summary, recs = run(spec_for(server, transport=transport, timestamps=stamps, max_requests=8, endpoint="chat"))
    assert summary["n_ok"] == 8
    for r in recs:
        assert 100 <= r["lat_ttft_ms"] < 2000 and len(r["itl_ms"]) == 3 and r["output_tokens"] == 4
        # the role-only first event is the first byte, not the first token
        assert r["lat_ttfb_ms"] + 30 < r["lat_ttft_ms"]


def test_poisson_open_loop_sends_on_schedule(server):
    runner, summary, recs = run(spec_for(server, pattern={"kind": "poisson", "rate": 200.0}, max_requests=None,
                                         duration_s=1.0, workload={"kind": "fixed_context", "context_tokens": 8,
                                                                   "output_tokens": 1}))
    assert 140 <= len(recs) <= 260
    lags = sorted(r["client_queue_ms"] for r in recs)
    assert lags[len(lags) // 2] < 2.0  # median scheduled -> sent, on a loaded CI machine
    assert all(r["concurrency"] is None for r in recs)


def test_trace_replay_end_to_end(server, tmp_path):
    rows = [{"timestamp": 1000 + 100 * i, "input_length": 40, "output_length": 2, "hash_ids": [i % 2]}
            for i in range(5)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner, summary, recs = run({"base_url": server.base_url, "model": "m",
                                 "pattern": {"kind": "trace", "path": str(path)},
                                 "workload": {"kind": "trace", "block_tokens": 32}})
    recs.sort(key=lambda r: r["sched_ns"])
    assert [round((r["sched_ns"] - recs[0]["sched_ns"]) / 1e6) for r in recs] == [0, 100, 200, 300, 400]
    assert [r["prompt_tokens"] for r in recs] == [40] * 5
    prompts = [b["prompt"].split() for b in server.requests]
    assert prompts[0][:32] == prompts[2][:32] != prompts[1][:32]
    assert runner.stop_reason == "pattern_done"


def test_kernel_stamps_by_default_with_read_lag_in_summary(server, tmp_path):
    import sys

    spec = validate_spec(spec_for(server, max_requests=12))
    assert spec["timestamps"] == "kernel"
    path = tmp_path / "metrics.jsonl"
    with open(path, "w", encoding="utf-8") as out:  # a real file: records are written per loop turn
        runner = Runner(spec, out)
        summary = asyncio.run(runner.run())
    lines = path.read_text().splitlines()
    assert len(lines) == summary["n_records"] == 12 and all(json.loads(x)["rc"] == 0 for x in lines)
    if sys.platform.startswith("linux"):
        assert runner.pool.kernel_stamps
        assert summary["read_lag_ms_p99"] is not None and summary["read_lag_ms_p99"] >= 0
    for r in (json.loads(x) for x in lines):  # kernel stamps keep the order of a request's events
        assert r["sched_ns"] <= r["sent_ns"] <= r["first_byte_ns"] <= r["first_token_ns"] <= r["end_ns"]


def test_max_consecutive_errors_counts_failures_in_a_row_only(server):
    server.behaviour.update(status=503)
    runner, summary, recs = run(spec_for(server, max_requests=1000, max_consecutive_errors=7,
                                         pattern={"kind": "closed", "concurrency": 1}))
    assert runner.stop_reason == "max_consecutive_errors" and len(recs) == 7
    server.behaviour.update(status=200)
    runner, _, recs = run(spec_for(server, max_requests=30, max_consecutive_errors=1))
    assert runner.stop_reason != "max_consecutive_errors" and len(recs) == 30


class FullDisk(io.StringIO):
    """An output that takes ``room`` characters, then fails like a full disk (a cut last write)."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def write(self, text):
        left = self.room - self.tell()
        if len(text) > left:
            super().write(text[:max(0, left)])
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_a_failed_write_stops_the_run_and_is_reported(server):
    out = FullDisk(room=2500)
    runner = Runner(validate_spec(spec_for(server, max_requests=None, duration_s=30.0)), out)
    summary = asyncio.run(asyncio.wait_for(runner.run(), timeout=20))
    assert runner.stop_reason == "write_failed"
    assert summary["write_error"].startswith("No space left on device") and summary["n_unwritten"] >= 1
    text = out.getvalue()
    assert len(text) == 2500 and not text.endswith("\n")  # the cut last line stays as written


def test_min_ok_requests_extends_the_load_until_the_count(server):
    # ~20 ms per request at concurrency 2: ~50 ok requests in 0.5 s, so 120 need ~1.2 s, within max 3 s
    server.behaviour.update(ttft_s=0.02, itl_s=0.0)
    runner, summary, recs = run(spec_for(server, max_requests=None, duration_s=0.5, min_ok_requests=120,
                                         max_duration_s=3.0, pattern={"kind": "closed", "concurrency": 2}))
    assert runner.stop_reason == "min_ok_requests" and runner.extended
    assert 120 <= sum(r["rc"] == 0 and r["window"] == "measure" for r in recs) <= 122  # + the one in flight


def test_min_ok_requests_gives_up_when_the_rate_cannot_reach_it(server):
    server.behaviour.update(ttft_s=0.02, itl_s=0.0)
    runner, summary, recs = run(spec_for(server, max_requests=None, duration_s=0.3, min_ok_requests=10_000,
                                         max_duration_s=1.0, pattern={"kind": "closed", "concurrency": 1}))
    assert runner.stop_reason == "duration" and not runner.extended and len(recs) < 100


def test_min_ok_requests_runs_to_the_cap_when_a_p99_bound_is_within_reach(server):
    # ~100 ok requests/s at concurrency 2: 10,000 are out of reach by 4.5 s, 299 are not -> run to the cap
    server.behaviour.update(ttft_s=0.02, itl_s=0.0)
    runner, summary, recs = run(spec_for(server, max_requests=None, duration_s=0.3, min_ok_requests=10_000,
                                         max_duration_s=4.5, pattern={"kind": "closed", "concurrency": 2}))
    assert runner.extended and runner.stop_reason == "max_duration" and len(recs) >= 299
