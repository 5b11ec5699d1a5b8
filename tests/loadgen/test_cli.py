"""The command line: exit codes, one-line spec errors, signals flush what completed."""

import json
import signal
import subprocess
import sys
import time

import pytest

PY = sys.executable


def loadgen(*args, **kw):
    return subprocess.run([PY, "-m", "kvharness", "loadgen", *args], capture_output=True, text=True, timeout=60, **kw)


def test_help_lists_flags():
    r = loadgen("--help")
    assert r.returncode == 0
    for flag in ("--spec", "--out", "--summary-out", "--base-url", "--model", "--concurrency", "--context-tokens",
                 "--output-tokens", "--duration-s"):
        assert flag in r.stdout


def test_bad_spec_exit_2_one_line(tmp_path):
    spec = tmp_path / "load.json"
    spec.write_text(json.dumps({"model": "m", "pattern": {"kind": "closed", "concurrency": 0},
                                "workload": {"kind": "fixed_context", "context_tokens": 8}, "duration_s": 1}))
    r = loadgen("--spec", str(spec), "--out", str(tmp_path / "m.jsonl"))
    assert r.returncode == 2
    assert r.stderr.strip() == "load spec: pattern.concurrency: expected an integer >= 1, got 0"


def test_flags_build_a_spec(server, tmp_path):
    out, summ = tmp_path / "m.jsonl", tmp_path / "s.json"
    r = loadgen("--base-url", server.base_url, "--model", "m", "--concurrency", "3", "--context-tokens", "50",
                "--output-tokens", "5", "--duration-s", "0.5", "--stack", "sim-A", "--out", str(out),
                "--summary-out", str(summ))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs and all(x["rc"] == 0 and x["prompt_tokens"] == 50 and x["output_tokens"] == 5 for x in recs)
    assert all(x["concurrency"] == 3 and x["stack"] == "sim-A" for x in recs)
    s = json.loads(summ.read_text())
    assert s["n_ok"] == len(recs) and s["spec"]["pattern"]["concurrency"] == 3


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_flushes_and_summarizes(server, tmp_path, sig, code):
    server.behaviour.update(ttft_s=0.02)
    out, summ = tmp_path / "m.jsonl", tmp_path / "s.json"
    p = subprocess.Popen([PY, "-m", "kvharness", "loadgen", "--base-url", server.base_url, "--model", "m",
                          "--concurrency", "2", "--context-tokens", "10", "--output-tokens", "2", "--duration-s",
                          "30", "--out", str(out), "--summary-out", str(summ)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.05)
    p.send_signal(sig)
    assert p.wait(timeout=20) == code
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    s = json.loads(summ.read_text())
    assert s["n_records"] == len(recs) > 0 and s["interrupted"] in ("SIGTERM", "SIGINT")


def test_missing_trace_file_exit_2(tmp_path):
    spec = tmp_path / "load.json"
    spec.write_text(json.dumps({"model": "m", "pattern": {"kind": "trace", "path": str(tmp_path / "nope.jsonl")},
                                "workload": {"kind": "trace"}}))
    r = loadgen("--spec", str(spec), "--out", str(tmp_path / "m.jsonl"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nope.jsonl" in r.stderr


def test_slo_goodput_in_summary(server, tmp_path):
    server.behaviour.update(ttft_s=0.03)
    spec = tmp_path / "load.json"
    spec.write_text(json.dumps({"base_url": server.base_url, "model": "m", "max_requests": 6,
                                "pattern": {"kind": "closed", "concurrency": 2},
                                "workload": {"kind": "fixed_context", "context_tokens": 8, "output_tokens": 2},
                                "slo": {"ttft_ms": 10.0}}))
    summ = tmp_path / "s.json"
    r = loadgen("--spec", str(spec), "--out", str(tmp_path / "m.jsonl"), "--summary-out", str(summ))
    assert r.returncode == 0, r.stderr
    s = json.loads(summ.read_text())
    assert s["good_fraction"] == 0.0 and s["goodput_req_s"] == 0.0 and s["n_ok"] == 6


@pytest.mark.parametrize("pattern", [{"kind": "closed", "concurrency": 5}, {"kind": "poisson", "rate": 100.0}])
def test_workers_split_the_load(server, tmp_path, pattern):
    spec = tmp_path / "load.json"
    spec.write_text(json.dumps({"base_url": server.base_url, "model": "m", "workers": 2, "duration_s": 1.0,
                                "pattern": pattern, "labels": {"stack": "w"},
                                "workload": {"kind": "fixed_context", "context_tokens": 8, "output_tokens": 2}}))
    out, summ = tmp_path / "m.jsonl", tmp_path / "s.json"
    r = loadgen("--spec", str(spec), "--out", str(out), "--summary-out", str(summ))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]  # every line is whole JSON
    s = json.loads(summ.read_text())
    assert s["workers"] == 2 and s["n_records"] == len(recs) > 0 and s["n_errors"] == 0
    assert len({x["request_id"].split("-")[0] for x in recs}) == 2
    if pattern["kind"] == "closed":
        assert {x["concurrency"] for x in recs} == {5}
        assert sorted(w["max_connections"] for w in s["per_worker"]) == [2, 3]
    else:
        assert 60 <= len(recs) <= 140


def test_workers_trace_keeps_timestamps(server, tmp_path):
    rows = [{"timestamp": 50 * i, "input_length": 10, "output_length": 1, "hash_ids": [i]} for i in range(6)]
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(x) + "\n" for x in rows))
    spec = tmp_path / "load.json"
    spec.write_text(json.dumps({"base_url": server.base_url, "model": "m", "workers": 2,
                                "pattern": {"kind": "trace", "path": str(trace)}, "workload": {"kind": "trace"}}))
    out = tmp_path / "m.jsonl"
    r = loadgen("--spec", str(spec), "--out", str(out), "--summary-out", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    recs = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda x: x["sched_ns"])
    assert [x["trace_ts_ms"] for x in recs] == [0, 50, 100, 150, 200, 250]
    assert [round((x["sched_ns"] - recs[0]["sched_ns"]) / 1e6) for x in recs] == [0, 50, 100, 150, 200, 250]
