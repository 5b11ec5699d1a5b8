"""What a person sees at a terminal: a live progress line whose last frame is exact, then the result table;
and when stdout is not a terminal, nothing but the table."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from kvharness.loadgen.table import latency_table, parse_percentiles, PercentileError

PY = sys.executable
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HEADER_KEYS = ("requests", "duration (s)", "request rate (req/s)", "output tok/s", "goodput (req/s)")


def _args(server, out, *extra):
    return [PY, "-m", "kvharness", "loadgen", "--base-url", server.base_url, "--model", "m", "--concurrency", "4",
            "--context-tokens", "20", "--output-tokens", "6", "--duration-s", "1.2", "--out", str(out), *extra]


def _run_in_pty(argv, timeout_s=60) -> tuple[int, str]:
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "140"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(10)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def _table_lines(text: str) -> list[str]:
    lines = [ANSI.sub("", ln).rstrip() for ln in re.split(r"[\r\n]+", text)]
    start = max(i for i, ln in enumerate(lines) if "kvharness loadgen result" in ln)
    return lines[start:]


def test_pty_final_frame_is_exact_and_table_has_every_column(server, tmp_path):
    server.behaviour.update(itl_s=0.004)
    out = tmp_path / "m.jsonl"
    summ = tmp_path / "s.json"
    rc, text = _run_in_pty(_args(server, out, "--summary-out", str(summ)))
    assert rc == 0, text[-2000:]
    n_records = len(out.read_text().splitlines())
    plain = ANSI.sub("", text)
    frames = re.findall(r"(\d+) done, (\d+) errors, (\d+) in flight", plain)
    assert len(frames) >= 2, plain[-2000:]  # live frames, then the final one
    done, errors, in_flight = map(int, frames[-1])
    assert done == n_records > 0 and errors == 0 and in_flight == 0
    table = _table_lines(text)
    header = next(ln for ln in table if ln.startswith("latency (ms)"))
    assert header.split()[2:] == ["mean", "p50", "p90", "p95", "p99", "max", "n"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in table if ln.split() and ln.split()[0] in ("TTFT", "TPOT", "ITL", "E2E")}
    assert set(rows) == {"TTFT", "TPOT", "ITL", "E2E"} and all(len(v) == 7 for v in rows.values())
    for key in HEADER_KEYS:
        assert any(ln.startswith(key) for ln in table), key
    assert f"{n_records} ok, 0 errors" in "\n".join(table)
    summary = json.loads(summ.read_text())  # the JSON summary still goes to --summary-out
    assert summary["n_ok"] == n_records and summary["latency_ms"]["ttft"]["n"] == n_records
    assert float(rows["TTFT"][-2]) == pytest.approx(summary["latency_ms"]["ttft"]["max"], abs=0.01)


def test_not_a_tty_prints_only_the_table_with_chosen_percentiles(server, tmp_path):
    out = tmp_path / "m.jsonl"
    r = subprocess.run(_args(server, out, "--percentiles", "50,90,99"), capture_output=True, text=True, timeout=60)
    noise = [line for line in r.stderr.splitlines() if "the client was the bottleneck" not in line]  # a busy box may warn
    assert r.returncode == 0 and noise == []
    lines = r.stdout.splitlines()
    assert "kvharness loadgen result" in lines[0] and set(lines[-1]) == {"="}
    header = next(ln for ln in lines if ln.startswith("latency (ms)"))
    assert header.split()[2:] == ["mean", "p50", "p90", "p99", "max", "n"]
    assert "done," not in r.stdout and "{" not in r.stdout


def test_format_json_and_bad_percentiles(server, tmp_path):
    out = tmp_path / "m.jsonl"
    r = subprocess.run(_args(server, out, "--format", "json", "--percentiles", "99.9,50"), capture_output=True,
                       text=True, timeout=60)
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["table_percentiles"] == [50, 99.9] and "p99.9" in s["latency_ms"]["e2e"]
    r = subprocess.run(_args(server, out, "--percentiles", "50,abc"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--percentiles" in r.stderr


def test_latency_table_exact_values():
    recs = [{"rc": 0, "lat_ttft_ms": t, "lat_tpot_ms": 2.0, "itl_ms": [1.0, 3.0], "lat_e2e_ms": t + 10}
            for t in (10.0, 20.0, 30.0, 40.0, 50.0)]
    recs.append({"rc": 500, "error_class": "http_500", "lat_ttft_ms": 1.0})  # errors are not latencies
    t = latency_table(recs, parse_percentiles("50,90"))
    assert t["ttft"] == {"mean": 30.0, "p50": 30.0, "p90": 46.0, "max": 50.0, "n": 5}
    assert t["itl"]["n"] == 10 and t["itl"]["mean"] == 2.0 and t["itl"]["max"] == 3.0
    assert t["e2e"]["p50"] == 40.0
    for bad in ("", "0", "100", "50,,90", "x"):
        with pytest.raises(PercentileError):
            parse_percentiles(bad)
